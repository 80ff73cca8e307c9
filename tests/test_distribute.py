"""Strategy selection, the padded evaluation input, and MirroredStrategy against one device.

The mirrored run splits the host CPU into two logical devices, which TensorFlow allows only
before it initialises its devices: it runs as a real ``run_train.py`` subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import demo_config

from vgg_keras import distribute
from vgg_keras.compat import tf, v1
from vgg_keras.data import pipeline
from vgg_keras.errors import UsageError
from vgg_keras.reporting import read_metrics

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWO_WORKERS = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
CLIP = 0.1  # below the gradient norms of these runs (about 0.18)


def _config(**overrides):
    return demo_config(data_dir="unused", **overrides)


def test_auto_is_none_on_a_cpu_host_and_multi_worker_under_tf_config():
    assert distribute.resolve_kind(_config()) == "none"
    assert distribute.resolve_kind(_config(), TWO_WORKERS) == "multi_worker"
    assert distribute.resolve_kind(_config(distribution="mirrored"), TWO_WORKERS) == "mirrored"
    assert distribute.resolve_kind(_config(devices=["cpu:0", "cpu:1"])) == "mirrored"


@pytest.mark.parametrize(
    ("overrides", "tf_config", "message"),
    [
        ({"distribution": "multi_worker"}, None, "--distribution multi_worker needs TF_CONFIG"),
        ({}, "{not json", "TF_CONFIG is not valid JSON"),
        (
            {"distribution": "none"},
            json.dumps({"cluster": TWO_WORKERS, "task": {"type": "worker", "index": 0}}),
            "TF_CONFIG describes 2 workers, but --distribution is none",
        ),
        (
            {},
            json.dumps({"cluster": TWO_WORKERS, "task": {"type": "worker", "index": 2}}),
            "TF_CONFIG: task index 2 is not one of the 2 worker addresses",
        ),
        ({"rank_size": 8}, None, "--rank_size applies to --distribution npu"),
        (
            {"distribution": "none", "devices": ["gpu:0"]},
            None,
            "--devices applies to --distribution mirrored, not none",
        ),
        (
            {"distribution": "mirrored", "devices": ["tpu:0"]},
            None,
            "--devices: 'tpu:0' is not a device name",
        ),
    ],
)
def test_impossible_settings_are_usage_errors(monkeypatch, overrides, tf_config, message):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(UsageError, match=message):
        distribute.create(_config(**overrides))


def test_device_names_are_normalised():
    assert distribute._device_name("gpu:1") == "/device:GPU:1"
    assert distribute._device_name("/CPU:0") == "/device:CPU:0"
    assert distribute._device_name("/device:GPU:3") == "/device:GPU:3"


def test_padding_gives_every_replica_full_batches_of_which_only_real_images_count():
    images = np.arange(5 * 2, dtype=np.float32).reshape(5, 2)
    labels = np.arange(5, dtype=np.int32) + 1
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(2)  # 2, 2, 1
    padded = distribute.pad_batches(dataset, batch_size=2, batches=4)
    batches = [tuple(part.numpy() for part in batch) for batch in padded]
    assert [len(b[0]) for b in batches] == [2, 2, 2, 2]
    got_images, got_labels, real = (np.concatenate(parts) for parts in zip(*batches))
    np.testing.assert_array_equal(real, [True] * 5 + [False] * 3)
    np.testing.assert_array_equal(got_images[:5], images)
    np.testing.assert_array_equal(got_labels[:5], labels)
    assert not got_images[5:].any() and not got_labels[5:].any()


def test_eval_steps_cover_the_largest_share():
    split = pipeline.Split("validation", ("a", "b", "c"), (5, 4, 1))
    strategy = tf.distribute.get_strategy()
    one = distribute.Distribution(strategy)
    assert one.eval_steps(split, 4) == 3  # 10 images
    # Two workers: files a, c (6 images) and b (4 images); batches of 4 -> 2 calls each.
    two = distribute.MultiWorker(strategy, num_replicas=2, num_workers=2)
    assert two.eval_steps(split, 4) == 2
    # Two workers with two replicas each: 8 images per call.
    four = distribute.MultiWorker(strategy, num_replicas=4, num_workers=2)
    assert four.eval_steps(split, 4) == 1


def test_the_single_device_graph_has_no_replicas():
    dist = distribute.single_device()
    assert (dist.num_replicas, dist.in_sync, dist.local_replicas, dist.is_chief) == (1, 1, 1, True)
    with tf.Graph().as_default(), dist.scope():
        doubled = dist.run(lambda x: 2.0 * x, tf.constant(3.0))
        total = dist.reduce(distribute.ReduceOp.SUM, doubled)
        with v1.Session() as session:
            assert session.run(total) == 6.0


def _weights(log_dir, step: int) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(f"{log_dir}/model.ckpt-{step}")
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


@pytest.mark.slow
def test_mirrored_on_two_cpus_matches_one_device_on_the_same_global_batches(
    script_runner, demo_dir, tmp_path
):
    """Two replicas of 8 images take the same steps as one device with batches of 16.

    Loop sinking (3 steps per session call) runs inside the strategy, and the evaluations in
    between count every validation image once across the two replicas.  The gradients are
    clipped (to a norm below theirs), by the norm of the global batch's gradient.
    """
    flags = ["--preset", "demo", "--data_dir", demo_dir, "--width_multiplier", "0.0625"]
    flags += ["--max_train_steps", "9", "--iterations_per_loop", "3", "--display_every", "3"]
    flags += ["--clip_grad_norm", str(CLIP)]
    flags += ["--mode", "train_and_evaluate", "--epochs_between_evals", "0.05"]
    flags += ["--progress", "false", "--save_checkpoints_steps", "9", "--seed", "3"]
    runs = {
        "one": ["--batch_size", "16", "--distribution", "none"],
        "two": ["--batch_size", "8", "--distribution", "mirrored", "--devices", "cpu:0,cpu:1"],
    }
    for name, extra in runs.items():
        proc = script_runner("run_train.py", *flags, *extra, "--log_dir", tmp_path / name)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    log = (tmp_path / "two" / "train.log").read_text()
    assert "distribution: mirrored, 2 replicas" in log
    assert "device:CPU:0" in log and "device:CPU:1" in log

    one, two = _weights(tmp_path / "one", 9), _weights(tmp_path / "two", 9)
    assert one.keys() == two.keys()  # a mirrored checkpoint restores on one device
    assert int(two["global_step"]) == 9
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert np.abs(two["fc1/kernel/Momentum"]).max() > 0, "momentum starts at zero: it trained"

    metrics_one, metrics_two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    train_one = [(m["step"], m["loss"]) for m in metrics_one if "loss" in m]
    train_two = [(m["step"], m["loss"]) for m in metrics_two if "loss" in m]
    assert [s for s, _ in train_two] == [3, 6, 9]
    norms_one = [m["grad_norm"] for m in metrics_one if "loss" in m]
    norms_two = [m["grad_norm"] for m in metrics_two if "loss" in m]
    assert min(norms_one) > CLIP, "every logged step was clipped"
    np.testing.assert_allclose(norms_two, norms_one, rtol=1e-5)
    np.testing.assert_allclose([x for _, x in train_two], [x for _, x in train_one], rtol=1e-5)
    evals_one = [m for m in metrics_one if "eval_top1" in m]
    evals_two = [m for m in metrics_two if "eval_top1" in m]
    assert len(evals_two) == len(evals_one) >= 2
    for a, b in zip(evals_one, evals_two):
        assert a["step"] == b["step"]
        np.testing.assert_allclose(b["eval_loss"], a["eval_loss"], rtol=1e-5)
        # The weights agree to float precision: at most an image whose two best classes nearly
        # tie can change its top-1.
        assert abs(a["eval_top1"] - b["eval_top1"]) * 360 <= 1 + 1e-9


@pytest.mark.slow
def test_a_checkpoint_of_either_strategy_resumes_under_the_other(script_runner, demo_dir, tmp_path):
    """Mirrored (2 x 8 images) for 6 steps, then one device (16 images) to step 12, and the
    other way round: both end where 12 uninterrupted single-device steps end."""
    flags = ["--preset", "demo", "--data_dir", demo_dir, "--width_multiplier", "0.0625"]
    flags += ["--iterations_per_loop", "3", "--display_every", "3", "--mode", "train"]
    flags += ["--progress", "false", "--save_checkpoints_steps", "6", "--seed", "3"]
    one = ["--batch_size", "16", "--distribution", "none"]
    two = ["--batch_size", "8", "--distribution", "mirrored", "--devices", "cpu:0,cpu:1"]
    legs = {"reference": [one], "mirrored_then_one": [two, one], "one_then_mirrored": [one, two]}
    for leg in range(2):
        procs = {
            name: subprocess.Popen(
                [sys.executable, os.path.join(REPO_ROOT, "run_train.py"), *flags, *kinds[leg]]
                + ["--max_train_steps", "12" if name == "reference" else str(6 * (leg + 1))]
                + ["--log_dir", str(tmp_path / name)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=REPO_ROOT,
            )
            for name, kinds in legs.items()
            if leg < len(kinds)
        }
        for name, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=600)
            assert proc.returncode == 0, stdout[-2000:] + stderr[-3000:]
            if leg == 1:
                assert f"resumed from {tmp_path / name}/model.ckpt-6 at step 6" in stdout
    reference = _weights(tmp_path / "reference", 12)
    for name in ("mirrored_then_one", "one_then_mirrored"):
        resumed = _weights(tmp_path / name, 12)
        assert resumed.keys() == reference.keys()
        for key in reference:
            np.testing.assert_allclose(
                resumed[key], reference[key], rtol=1e-5, atol=1e-6, err_msg=f"{name}: {key}"
            )
        losses = [m["loss"] for m in read_metrics(tmp_path / name) if m["step"] > 6]
        expected = [m["loss"] for m in read_metrics(tmp_path / "reference") if m["step"] > 6]
        np.testing.assert_allclose(losses, expected, rtol=1e-5)
