"""Evaluation in process on real checkpoints (``eval_run``: steps 50, 100, 150 of a small run):
exact image counts, top-1/top-5/loss against an independent numpy computation, ten-crop
geometry (its numbers: test_e2e_eval), one graph for many checkpoints, checkpoints deleted by
rotation, and where the settings come from.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil

import numpy as np
import pytest

from vgg_keras import checkpoints, cli, evaluation
from vgg_keras.compat import tf, v1
from vgg_keras.config import make_config
from vgg_keras.data import pipeline, preprocess
from vgg_keras.errors import EXIT_NONFINITE, UsageError
from vgg_keras.model import build_vgg
from vgg_keras.reporting import Reporter

SIZE = 32


def _config(run_dir: str, *flags: str):
    """The Config run_eval.py would use for ``run_dir`` with ``flags``."""
    args = cli.eval_parser().parse_args(["--ckpt", run_dir, *flags])
    return evaluation.resolve_config(args, run_dir)


@pytest.fixture(scope="module")
def last_checkpoint(eval_run) -> str:
    found = checkpoints.list_checkpoints(eval_run)
    assert [checkpoints.checkpoint_step(p) for p in found] == [50, 100, 150]
    return found[-1]


def test_ten_crops_are_the_corners_centre_and_their_mirrors(jpeg_encoder):
    rng = np.random.default_rng(0)
    jpeg = jpeg_encoder(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    crops = preprocess.ten_crop_images(tf.constant(jpeg), SIZE).numpy()
    assert crops.shape == (10, SIZE, SIZE, 3)
    # The same resize, then plain numpy slicing at the five positions.
    side = round(SIZE * preprocess.EVAL_RESIZE_RATIO)
    resized = preprocess.resize_shorter_side(tf.io.decode_jpeg(jpeg, channels=3), side)
    resized = preprocess.normalize(resized).numpy()
    height, width = resized.shape[:2]
    assert (height, width) == (side, round(56 * side / 40))  # non-square: corners all differ
    bottom, right = height - SIZE, width - SIZE
    for i, (top, left) in enumerate(
        [(0, 0), (0, right), (bottom, 0), (bottom, right), (bottom // 2, right // 2)]
    ):
        expected = resized[top : top + SIZE, left : left + SIZE]
        np.testing.assert_allclose(crops[i], expected, atol=1e-5)
        np.testing.assert_allclose(crops[i + 5], expected[:, ::-1], atol=1e-5)
    # The centre crop is exactly what single-crop evaluation sees.
    np.testing.assert_allclose(crops[4], preprocess.eval_image(tf.constant(jpeg), SIZE).numpy())


def test_ten_crop_pipeline_keeps_every_image_once(demo_dir):
    split = pipeline.load_split(demo_dir, "validation")
    ds = pipeline.eval_dataset(split, 50, SIZE, 10, crops=10)
    shapes = [tuple(images.shape) for images, _ in ds]
    assert shapes[0] == (50, 10, SIZE, SIZE, 3)
    assert sum(s[0] for s in shapes) == split.num_examples == 360
    with pytest.raises(ValueError, match="crops must be 1 or 10"):
        pipeline.eval_dataset(split, 50, SIZE, 10, crops=5)


def test_every_image_counted_once_for_any_batch_size(eval_run, last_checkpoint):
    results = []
    for batch in (7, 100):  # neither divides the 360 validation images
        evaluator = evaluation.Evaluator(_config(eval_run, "--eval_batch_size", str(batch)))
        try:
            results.append(evaluator.evaluate(last_checkpoint))
            assert evaluator.split.num_examples == 360
        finally:
            evaluator.close()
    assert [r["images"] for r in results] == [360, 360]
    assert results[0]["loss"] == pytest.approx(results[1]["loss"], rel=1e-5)
    # Batches of another size may sum in another order: top-k can move only for an image whose
    # k-th and (k+1)-th logits nearly tie.
    logits, _ = _numpy_logits(_config(eval_run), last_checkpoint)
    ranked = -np.sort(-logits, axis=1)
    for k, key in ((1, "top1"), (5, "top5")):
        near_ties = int(np.sum(ranked[:, k - 1] - ranked[:, k] < 1e-4))
        assert abs(results[0][key] - results[1][key]) * 360 <= near_ties + 1e-9, key


def _numpy_logits(config, checkpoint: str) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of every validation image, without the Evaluator: the model, a plain
    Saver restore and the eval pipeline's batches."""
    split = pipeline.load_split(config.data_dir, "validation")
    with tf.Graph().as_default() as graph:
        size = config.image_size
        model = build_vgg(config.arch, config.class_num, size, config.width_multiplier, 0.0)
        dataset = pipeline.eval_dataset(
            split, 64, size, config.class_num, normalization=config.preprocess
        )
        images, labels = v1.data.make_one_shot_iterator(dataset).get_next()
        logits = model(images, training=False)
        saver = v1.train.Saver(model.weights)
        all_logits, all_labels = [], []
        with v1.Session(graph=graph) as sess:
            saver.restore(sess, checkpoint)
            while True:
                try:
                    batch_logits, batch_labels = sess.run([logits, labels])
                except tf.errors.OutOfRangeError:
                    break
                all_logits.append(batch_logits)
                all_labels.append(batch_labels)
    return np.concatenate(all_logits), np.concatenate(all_labels)


def test_metrics_equal_an_independent_numpy_computation(eval_run, last_checkpoint):
    config = _config(eval_run)
    evaluator = evaluation.Evaluator(config)
    try:
        result = evaluator.evaluate(last_checkpoint)
    finally:
        evaluator.close()
    logits, labels = _numpy_logits(config, last_checkpoint)
    assert len(labels) == result["images"] == 360
    top1 = np.mean(np.argmax(logits, axis=1) == labels)
    top5 = np.mean([label in np.argsort(-row)[:5] for row, label in zip(logits, labels)])
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -np.mean(log_probs[np.arange(len(labels)), labels])
    assert result["top1"] == top1
    assert result["top5"] == top5
    assert result["loss"] == pytest.approx(loss, rel=1e-4)
    assert 0.2 < result["top1"] <= result["top5"] <= 1  # trained: well above chance (0.1)


def test_one_graph_for_all_checkpoints_in_step_order(eval_run, tmp_path, capsys):
    evaluator = evaluation.Evaluator(_config(eval_run))
    ops_before = len(evaluator.graph.get_operations())
    reporter = Reporter(str(tmp_path), evaluation.EVAL_LOG, progress=False, summary_subdir="eval")
    try:
        results = evaluation.evaluate_checkpoints(
            evaluator, checkpoints.list_checkpoints(eval_run), reporter, str(tmp_path)
        )
    finally:
        reporter.close()
        evaluator.close()
    assert evaluator.graph.finalized
    assert len(evaluator.graph.get_operations()) == ops_before
    assert [r["step"] for r in results] == [50, 100, 150]
    assert [r["images"] for r in results] == [360] * 3
    assert all(r["top1"] <= r["top5"] for r in results)
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["step", "epoch", "top1", "top5", "loss", "checkpoint_time(UTC)"]
    assert [int(line.split()[0]) for line in table[1:]] == [50, 100, 150]
    with open(tmp_path / evaluation.RESULTS_JSON) as f:
        assert [r["step"] for r in json.load(f)] == [50, 100, 150]
    with open(tmp_path / evaluation.CURVE_PNG, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_checkpoints_deleted_by_rotation_are_skipped(eval_run, tmp_path, capsys):
    folder = tmp_path / "run"
    shutil.copytree(eval_run, folder)
    first, middle, last = checkpoints.list_checkpoints(str(folder))
    # Listed, then rotated away before being read: one completely, one half-way (index left).
    for name in os.listdir(folder):
        if name.startswith(os.path.basename(first) + "."):
            os.remove(folder / name)
    for name in os.listdir(folder):
        if name.startswith(os.path.basename(middle) + ".data"):
            os.remove(folder / name)
    evaluator = evaluation.Evaluator(_config(str(folder)))
    reporter = Reporter(str(tmp_path), evaluation.EVAL_LOG, progress=False, summary_subdir="eval")
    try:
        results = evaluation.evaluate_checkpoints(
            evaluator, [first, middle, last], reporter, str(tmp_path)
        )
    finally:
        reporter.close()
        evaluator.close()
    assert [r["checkpoint"] for r in results] == [last]
    out = capsys.readouterr().out
    assert f"skipped: {first} was deleted before it was read" in out
    assert f"skipped: {middle} was deleted before it was read" in out


def test_settings_come_from_config_json_and_flags_override(eval_run, tmp_path):
    with open(os.path.join(eval_run, "config.json")) as f:
        saved = json.load(f)
    config = _config(eval_run, "--eval_batch_size", "7", "--arch", "vgg19")
    assert (config.arch, config.eval_batch_size) == ("vgg19", 7)
    assert config.class_num == saved["class_num"] == 10
    assert config.width_multiplier == saved["width_multiplier"] == 0.125
    assert config.data_dir == saved["data_dir"]
    assert config.preprocess == saved["preprocess"]
    # A folder without config.json needs --data_dir and takes the ImageNet defaults, but the
    # class count of the dataset's dataset_info.json (issue 15).
    with pytest.raises(UsageError, match=r"--data_dir is required \(no config.json in "):
        _config(str(tmp_path))
    bare = _config(str(tmp_path), "--data_dir", saved["data_dir"])
    assert (bare.arch, bare.class_num, bare.image_size) == ("vgg16", 10, 224)


def test_which_checkpoints_a_command_line_names(eval_run, tmp_path, monkeypatch):
    found = checkpoints.list_checkpoints(eval_run)
    monkeypatch.chdir(tmp_path)  # no runs/ here

    def targets(*flags):
        folder, paths = evaluation._targets(cli.eval_parser().parse_args(list(flags)))
        return folder, list(paths)

    assert targets("--ckpt", eval_run) == (eval_run, found[-1:])
    assert targets("--ckpt", found[0]) == (eval_run, found[:1])
    assert targets("--all-ckpts", "--eval_dir", eval_run) == (eval_run, found)
    assert targets("--all_ckpts", "--ckpt", eval_run + "/") == (eval_run, found)
    assert targets("--eval_dir", eval_run) == (eval_run, found)  # every one, as the reference's
    for flags, message in [
        ((), "no run with checkpoints under runs/"),
        (("--eval_dir", found[0]), f"--eval_dir needs a folder, {found[0]} is one"),
        (("--ckpt", found[0], "--eval_dir", eval_run), "give one of them"),
        (("--all-ckpts", "--ckpt", found[0]), f"--all-ckpts needs a folder, {found[0]} is one"),
        (("--ckpt", str(tmp_path / "nope")), "checkpoint not found"),
        (("--ckpt", str(tmp_path)), f"no model.ckpt-* checkpoints in {tmp_path}"),
    ]:
        with pytest.raises(UsageError, match=re.escape(message)):
            targets(*flags)


def test_mode_evaluate_exit_code_for_nan_weights(demo_dir, tmp_path, capsys):
    """run_train.py --mode evaluate: every checkpoint; a NaN network is exit code 3."""
    config = make_config(
        "demo", data_dir=demo_dir, log_dir=str(tmp_path), width_multiplier=0.0625, mode="evaluate"
    )
    with tf.Graph().as_default() as graph:
        model = build_vgg(config.arch, config.class_num, SIZE, config.width_multiplier, 0.0)
        bias = model.get_layer("predictions").bias
        poison = v1.assign(bias, tf.fill(bias.shape, float("nan")))
        saver = v1.train.Saver(model.weights)
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            saver.save(sess, str(tmp_path / checkpoints.PREFIX), global_step=1)
            sess.run(poison)
            saver.save(sess, str(tmp_path / checkpoints.PREFIX), global_step=2)
    assert evaluation.evaluate_folder(config) == EXIT_NONFINITE
    assert [int(line.split()[0]) for line in capsys.readouterr().out.splitlines()[2:]] == [1, 2]
    with open(tmp_path / evaluation.RESULTS_JSON) as f:
        results = json.load(f)
    assert [r["images"] for r in results] == [360, 360]
    assert np.isfinite(results[0]["loss"]) and np.isnan(results[1]["loss"])


def test_run_eval_has_no_training_only_flags():
    # --dense_init only shapes the initial weights: a checkpoint's evaluation cannot use it.
    with pytest.raises(UsageError, match="--dense_init"):
        cli.eval_parser().parse_args(["--ckpt", "runs/x", "--dense_init", "he"])
    args = cli.eval_parser().parse_args(["--ckpt", "runs/x", "--tfds_data_dir", "/tfds"])
    assert args.tfds_data_dir == "/tfds"


def test_epochs_are_those_training_logged_with_its_global_batch(eval_run, tmp_path):
    """A 2-replica run logs epoch = step * 2 * batch / images; its evaluation says the same."""
    last = checkpoints.list_checkpoints(eval_run)[-1]
    for path in [os.path.join(eval_run, "config.json"), *glob.glob(last + ".*")]:
        shutil.copy(path, tmp_path)
    with open(os.path.join(eval_run, "config.json")) as f:
        saved = json.load(f)
    epoch = 150 * 2 * saved["batch_size"] / 1437  # the demo's 1437 training images
    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.write(json.dumps({"step": 150, "epoch": epoch, "fps": 1.0, "loss": 1.0}) + "\n")
    config = make_config(**{**saved, "mode": "evaluate", "log_dir": str(tmp_path)})
    assert evaluation.evaluate_folder(config) == 0
    with open(tmp_path / evaluation.RESULTS_JSON) as f:
        assert json.load(f)[0]["epoch"] == round(epoch, 3)
