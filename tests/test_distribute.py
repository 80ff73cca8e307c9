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
from conftest import demo_config, run_in_process

from vgg_keras import compat, distribute
from vgg_keras.compat import tf, v1
from vgg_keras.data import pipeline
from vgg_keras.errors import UsageError
from vgg_keras.reporting import read_metrics
from vgg_keras.tools import discovery

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
        ({}, "{not json", "TF_CONFIG: unreadable cluster description"),
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
    # Made anew for every checkpoint: without the autotuner, whose sleeping thread the old
    # iterator's destruction waited for (docs/performance.md).
    options = padded.options()
    tuned = options.experimental_optimization.autotune if compat.TF1 else options.autotune.enabled
    assert tuned is False


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


def _autotunes(iterator: tf.Operation) -> bool:
    """Whether the dataset ``iterator`` reads autotunes: TF 2 keeps a dataset's options in its
    OptionsDataset ops, TF 1.15 adds a ModelDataset op where it autotunes."""
    ops, seen, switched_off = [iterator], set(), False
    while ops:
        op = ops.pop()
        if op.type == "ModelDataset":
            return True
        if op.type == "OptionsDataset":
            from tensorflow.core.framework import dataset_options_pb2

            options = dataset_options_pb2.Options.FromString(op.get_attr("serialized_options"))
            tune = options.autotune_options
            switched_off |= tune.WhichOneof("optional_enabled") == "enabled" and not tune.enabled
        # Along the datasets only: a per-device dataset names its source by a resource.
        for tensor in op.inputs:
            if tensor.dtype == tf.variant and tensor.op.name not in seen:
                seen.add(tensor.op.name)
                ops.append(tensor.op)
    return not (compat.TF1 or switched_off)


def autotuned_iterators(data_dir: str) -> dict[str, list[str]]:
    """The iterators that autotune in the training and evaluation graphs of a mirrored run on
    two CPUs, of a single-device run and of a --synthetic one (run in a fresh process: it
    splits the CPU)."""
    from vgg_keras import clock, evaluation, train_graph, training

    found = {}
    runs = {"mirrored": {"devices": ["cpu:0", "cpu:1"]}, "one device": {}}
    runs["synthetic"] = {"synthetic": True}
    for name, extra in runs.items():
        config = demo_config(data_dir=data_dir, width_multiplier=0.0625, batch_size=8, **extra)
        dist = distribute.create(config)
        split = pipeline.load_split(config.input, "train")
        plan = clock.plan(config, split.num_examples, dist.num_replicas, "fp32")
        dataset_fn = training._dataset_fn(config, plan, split, 0, dist)
        graphs = {"training": train_graph.build(config, dataset_fn, plan, dist).graph}
        with evaluation.Evaluator(config, plan.steps_per_epoch, dist=dist, precision="fp32") as ev:
            graphs["evaluation"] = ev.graph
        for what, graph in graphs.items():
            iterators = [
                op
                for op in graph.get_operations()
                if op.type in ("MakeIterator", "MultiDeviceIteratorInit")
            ]
            assert iterators, what
            found[f"{name} {what}"] = [op.name for op in iterators if _autotunes(op)]
    return found


def test_no_iterator_of_a_run_autotunes_so_closing_one_never_waits(demo_dir):
    """Closing a session, or re-initialising the evaluation's iterator, waits for tf.data's
    autotuner thread, asleep up to a minute (5-18 s at the end of a two-replica run).  The
    strategy's per-device datasets do not inherit the input's options: they get their own."""
    script = "import json, test_distribute as t; print(json.dumps(t.autotuned_iterators(%r)))"
    proc = subprocess.run(
        [sys.executable, "-c", script % demo_dir],
        cwd=os.path.join(REPO_ROOT, "tests"),
        env={**os.environ, "PYTHONPATH": REPO_ROOT},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(found) == 6 and not any(found.values()), found


def _weights(log_dir, step: int) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(f"{log_dir}/model.ckpt-{step}")
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


@pytest.mark.slow
def test_mirrored_on_two_cpus_matches_one_device_on_the_same_global_batches(
    script_runner, demo_dir, tmp_path
):
    """Two replicas of 8 images take the same steps as one device with batches of 16, and so do
    two replicas that each accumulate two micro-batches of 4.

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
    runs["accumulated"] = [*runs["two"][2:], "--batch_size", "4", "--accumulation_steps", "2"]
    for name, extra in runs.items():  # one device: in this process (no TensorFlow start)
        run = run_in_process if name == "one" else script_runner
        proc = run("run_train.py", *map(str, [*flags, *extra, "--log_dir", tmp_path / name]))
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    one, metrics_one = _weights(tmp_path / "one", 9), read_metrics(tmp_path / "one")
    train_one = [(m["step"], m["loss"]) for m in metrics_one if "loss" in m]
    norms_one = [m["grad_norm"] for m in metrics_one if "loss" in m]
    assert min(norms_one) > CLIP, "every logged step was clipped"
    evals_one = [m for m in metrics_one if "eval_top1" in m]
    for name in ("two", "accumulated"):
        log = (tmp_path / name / "train.log").read_text()
        assert "distribution: mirrored, 2 replicas" in log
        assert "device:CPU:0" in log and "device:CPU:1" in log

        two = _weights(tmp_path / name, 9)
        assert one.keys() == two.keys()  # a mirrored checkpoint restores on one device
        assert int(two["global_step"]) == 9, "global_step counts optimizer steps"
        for variable in one:
            np.testing.assert_allclose(
                two[variable], one[variable], rtol=1e-5, atol=1e-6, err_msg=f"{name} {variable}"
            )
        assert np.abs(two["fc1/kernel/Momentum"]).max() > 0, "momentum starts at zero: it trained"

        metrics_two = read_metrics(tmp_path / name)
        train_two = [(m["step"], m["loss"]) for m in metrics_two if "loss" in m]
        assert [s for s, _ in train_two] == [3, 6, 9]
        norms_two = [m["grad_norm"] for m in metrics_two if "loss" in m]
        np.testing.assert_allclose(norms_two, norms_one, rtol=1e-5)
        np.testing.assert_allclose([x for _, x in train_two], [x for _, x in train_one], rtol=1e-5)
        evals_two = [m for m in metrics_two if "eval_top1" in m]
        assert len(evals_two) == len(evals_one) >= 2
        for a, b in zip(evals_one, evals_two):
            assert a["step"] == b["step"]
            np.testing.assert_allclose(b["eval_loss"], a["eval_loss"], rtol=1e-5)
            # The weights agree to float precision: at most an image whose two best classes
            # nearly tie can change its top-1.
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
        argvs = {
            name: [*flags, *kinds[leg], "--log_dir", str(tmp_path / name)]
            + ["--max_train_steps", "12" if name == "reference" else str(6 * (leg + 1))]
            for name, kinds in legs.items()
            if leg < len(kinds)
        }
        # A mirrored leg in a process of its own (see above); meanwhile, the others in this one.
        mirrored = {
            name: subprocess.Popen(
                [sys.executable, os.path.join(REPO_ROOT, "run_train.py"), *argv],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=REPO_ROOT,
            )
            for name, argv in argvs.items()
            if "mirrored" in argv
        }
        outputs = {
            name: run_in_process("run_train.py", *argv)
            for name, argv in argvs.items()
            if name not in mirrored
        }
        for name, proc in mirrored.items():
            stdout, stderr = proc.communicate(timeout=600)
            outputs[name] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        for name, proc in outputs.items():
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
            if leg == 1:
                assert f"resumed from {tmp_path / name}/model.ckpt-6 at step 6" in proc.stdout
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


# ---------------------------------------------------------------------------------------------
# The cluster of an srun job step, read from SLURM's environment as srun sets it for each task.

NEEDS_TF2 = "multi-worker training needs TF 2 (a SLURM step of several tasks is refused on 1.15)"


@pytest.fixture
def slurm(monkeypatch):
    """``slurm(**variables)``: this process as a task of an srun step (SLURM_ added to each
    name); no TF_CONFIG and no other SLURM variable."""
    for name in list(os.environ):
        if name.startswith(("SLURM_", "SLURMD_")) or name == "TF_CONFIG":
            monkeypatch.delenv(name)

    def setenv(**variables):
        for name, value in variables.items():
            monkeypatch.setenv(name if name.startswith("SLURMD_") else f"SLURM_{name}", value)

    return setenv


def _step(tasks: int, nodes: str, per_node: str, rank: int, **more) -> dict:
    """The variables srun sets for task ``rank`` of a step (and of the job it runs in)."""
    step = {"NTASKS": str(tasks), "STEP_NUM_TASKS": str(tasks), "PROCID": str(rank)}
    step.update(NODELIST=nodes, JOB_NODELIST=nodes, STEP_NODELIST=nodes)
    step.update(TASKS_PER_NODE=per_node, STEP_TASKS_PER_NODE=per_node, JOB_ID="4242")
    return {**step, **more}


@pytest.mark.skipif(not compat.MULTI_WORKER, reason=NEEDS_TF2)
def test_a_step_on_two_nodes_is_a_two_worker_cluster_with_ports_from_the_job_id(slurm):
    slurm(**_step(2, "gpu[07-08]", "1(x2)", 1, LOCALID="0", SLURMD_NODENAME="gpu08"))
    tf_config, source = discovery.read_cluster()
    port = discovery.SLURM_JOB_PORTS + 4242
    assert tf_config == {
        "cluster": {"worker": [f"gpu07:{port}", f"gpu08:{port}"]},
        "task": {"type": "worker", "index": 1},
    }
    assert source == discovery.SLURM_SOURCE
    assert distribute.resolve_kind(_config(), tf_config["cluster"]) == "multi_worker"


@pytest.mark.skipif(not compat.MULTI_WORKER, reason=NEEDS_TF2)
def test_two_tasks_on_one_node_get_consecutive_ports_from_the_reserved_range(slurm):
    slurm(**_step(2, "localhost", "2", 1, LOCALID="1", STEP_RESV_PORTS="12000-12001"))
    tf_config, _ = discovery.read_cluster()
    assert tf_config["cluster"] == {"worker": ["localhost:12000", "localhost:12001"]}
    assert tf_config["task"] == {"type": "worker", "index": 1}


def test_one_task_or_no_srun_step_is_not_a_cluster(slurm):
    slurm(**_step(1, "gpu07", "1", 0))
    assert discovery.read_cluster()[0] is None
    assert distribute.resolve_kind(_config()) == "none"
    # A batch script running python itself: the job has 2 tasks, but no srun step started it.
    slurm(NTASKS="2", PROCID="0", NODELIST="gpu[07-08]", TASKS_PER_NODE="1(x2)")
    os.environ.pop("SLURM_STEP_NUM_TASKS")
    assert discovery.read_cluster()[0] is None


def test_tf_config_wins_over_slurm(slurm, monkeypatch):
    slurm(**_step(2, "gpu[07-08]", "1(x2)", 1))
    tf_config = {"cluster": TWO_WORKERS, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    assert discovery.read_cluster() == (tf_config, "TF_CONFIG")


@pytest.mark.skipif(compat.MULTI_WORKER, reason="TF 1.15 only: there it is refused")
def test_a_step_of_several_tasks_is_refused_on_tf1(slurm):
    slurm(**_step(2, "gpu[07-08]", "1(x2)", 0))
    with pytest.raises(UsageError, match="srun started 2 tasks: .* needs TensorFlow 2"):
        distribute.create(_config())


@pytest.mark.skipif(not compat.MULTI_WORKER, reason=NEEDS_TF2)
@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"PROCID": None}, "SLURM_PROCID is not set"),
        ({"PROCID": "x"}, "SLURM_PROCID must be an integer between 0 and 1, got 'x'"),
        ({"PROCID": "2"}, "SLURM_PROCID must be an integer between 0 and 1, got '2'"),
        ({"STEP_NUM_TASKS": "two"}, "SLURM_STEP_NUM_TASKS must be an integer >= 1"),
        ({"STEP_NODELIST": None}, "SLURM_STEP_NODELIST is not set"),
        ({"STEP_NODELIST": "gpu[07-"}, "SLURM_STEP_NODELIST is not a SLURM host list"),
        ({"STEP_TASKS_PER_NODE": "1(x"}, "SLURM_STEP_TASKS_PER_NODE is not a SLURM task count"),
        ({"STEP_TASKS_PER_NODE": "3"}, "SLURM_STEP_TASKS_PER_NODE '3' on the nodes"),
        ({"STEP_TASKS_PER_NODE": "1"}, "does not make the SLURM_STEP_NUM_TASKS=2 tasks"),
        ({"STEP_RESV_PORTS": "12000-11000"}, "SLURM_STEP_RESV_PORTS must be a port range"),
        # Node names that sort otherwise than SLURM lists them: the resolver puts task 0 on
        # gpu10 (sorted as text), while srun started it on gpu9.
        (
            {"STEP_NODELIST": "gpu[9-10]", "SLURMD_NODENAME": "gpu9", "LOCALID": "0"},
            "SLURM_PROCID 0 runs on gpu9 as local task 0 .* places it at gpu10:",
        ),
    ],
)
def test_slurm_variables_that_make_no_cluster_are_one_line_naming_the_variable(
    slurm, variables, message
):
    step = _step(2, "gpu[07-08]", "1(x2)", 0)
    step.update(variables)
    slurm(**{name: value for name, value in step.items() if value is not None})
    with pytest.raises(UsageError, match=message) as caught:
        distribute.create(_config())
    assert "\n" not in str(caught.value)


@pytest.mark.skipif(not compat.MULTI_WORKER, reason=NEEDS_TF2)
def test_two_tasks_on_one_node_need_two_reserved_ports(slurm):
    slurm(**_step(2, "localhost", "2", 1, LOCALID="1", STEP_RESV_PORTS="12000"))
    with pytest.raises(UsageError, match="SLURM_STEP_RESV_PORTS ends at 12000, but local task 1"):
        discovery.read_cluster()


@pytest.mark.skipif(not compat.MULTI_WORKER, reason=NEEDS_TF2)
def test_a_slurm_step_with_another_distribution_is_refused(slurm):
    slurm(**_step(2, "gpu[07-08]", "1(x2)", 0))
    with pytest.raises(UsageError, match=r"SLURM \(SLURM_STEP_NUM_TASKS\) describes 2 workers, "):
        distribute.create(_config(distribution="none"))
