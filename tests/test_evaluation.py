"""Evaluation in process on real checkpoints (``eval_run``: steps 50, 100, 150 of a small run):
exact image counts, top-1/top-5/loss against an independent numpy computation, ten-crop
geometry (its numbers: test_e2e_eval), one graph for many checkpoints, checkpoints deleted by
rotation, where the settings come from, and the results files (merged by step, other settings
in eval_results.<tag>.json, per-class accuracy and the confusion matrix).
"""

from __future__ import annotations

import csv
import glob
import json
import os
import re
import shutil

import numpy as np
import pytest
from conftest import demo_config

from vgg_keras import cli, commands, evaluation, results, rundir
from vgg_keras import config as config_lib
from vgg_keras import model as model_lib
from vgg_keras.compat import tf, v1
from vgg_keras.data import pipeline, preprocess
from vgg_keras.errors import EXIT_NONFINITE, UsageError
from vgg_keras.reporting import Reporter, read_metrics

SIZE = 32
PNG = b"\x89PNG\r\n\x1a\n"


def _config(run_dir: str, *flags: str):
    """The Config run_eval.py would use for ``run_dir`` with ``flags``."""
    args = cli.eval_args(["--ckpt", run_dir, *flags])
    return evaluation.resolve_config(args.settings, run_dir, rundir.latest_checkpoint(run_dir))


def _evaluator(run_dir: str, *flags: str, **kwargs) -> evaluation.Evaluator:
    """The Evaluator run_eval.py makes for ``run_dir`` with ``flags``."""
    steps_per_epoch = rundir.read_recorded(run_dir).get("steps_per_epoch")
    config = _config(run_dir, *flags)
    return evaluation.Evaluator(config, steps_per_epoch, precision="fp32", **kwargs)


def _evaluate(run_dir: str, output=None, settings=None, **options) -> list[dict]:
    """run_eval.py in this process: ``options`` are its own, ``settings`` its other flags."""
    values = {"output": str(output) if output else None, **options}
    return evaluation.run(cli.EvalOptions(**values), settings or {})


def _network_and_input(**settings):
    config = config_lib.resolve(settings=settings, need_data=False)
    return config.network, config.input


@pytest.fixture(scope="module")
def last_checkpoint(eval_run) -> str:
    found = rundir.list_checkpoints(eval_run)
    assert [rundir.checkpoint_step(p) for p in found] == [50, 100, 150]
    return found[-1]


def test_ten_crops_are_the_corners_centre_and_their_mirrors(jpeg_encoder):
    rng = np.random.default_rng(0)
    jpeg = jpeg_encoder(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    network, inp = _network_and_input(image_size=SIZE)
    crops = preprocess.ten_crop_images(tf.constant(jpeg), network, inp).numpy()
    assert crops.shape == (10, SIZE, SIZE, 3)
    # The same resize, then plain numpy slicing at the five positions.
    side = round(SIZE * preprocess.EVAL_RESIZE_RATIO)
    decoded = tf.io.decode_jpeg(jpeg, channels=3)
    resized = preprocess.resize_shorter_side(decoded, side, "standard")
    resized = preprocess.normalize(resized, "imagenet").numpy()
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
    single = preprocess.eval_image(tf.constant(jpeg), network, inp).numpy()
    np.testing.assert_allclose(crops[4], single)


def test_ten_crop_pipeline_keeps_every_image_once(demo_dir):
    network, inp = _network_and_input(data_dir=demo_dir, image_size=SIZE, class_num=10)
    split = pipeline.load_split(inp, "validation")
    ds = pipeline.eval_dataset(split, network, inp, 50, crops=10)
    shapes = [tuple(images.shape) for images, _ in ds]
    assert shapes[0] == (50, 10, SIZE, SIZE, 3)
    assert sum(s[0] for s in shapes) == split.num_examples == 360
    # Other crop counts are refused where they are asked for, before TensorFlow starts.
    with pytest.raises(UsageError, match=r"^--eval_crops: must be one of 1, 10, got 5$"):
        cli.eval_args(["--eval_crops", "5"])


def test_every_image_counted_once_for_any_batch_size(eval_run, last_checkpoint):
    found = []
    for batch in (7, 100):  # neither divides the 360 validation images
        with _evaluator(eval_run, "--eval_batch_size", str(batch)) as evaluator:
            found.append(evaluator.evaluate(last_checkpoint))
            assert evaluator.split.num_examples == 360
    assert [r["images"] for r in found] == [360, 360]
    assert found[0]["loss"] == pytest.approx(found[1]["loss"], rel=1e-5)
    # Batches of another size may sum in another order: top-k can move only for an image whose
    # k-th and (k+1)-th logits nearly tie.
    logits, _ = _numpy_logits(_config(eval_run), last_checkpoint)
    ranked = -np.sort(-logits, axis=1)
    for k, key in ((1, "top1"), (5, "top5")):
        near_ties = int(np.sum(ranked[:, k - 1] - ranked[:, k] < 1e-4))
        assert abs(found[0][key] - found[1][key]) * 360 <= near_ties + 1e-9, key


def _numpy_logits(config, checkpoint: str) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of every validation image, without the Evaluator: the model, a plain
    Saver restore and the eval pipeline's batches."""
    split = pipeline.load_split(config.input, "validation")
    with tf.Graph().as_default() as graph:
        model = model_lib.build(config.network)
        dataset = pipeline.eval_dataset(split, config.network, config.input, 64)
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
    with _evaluator(eval_run) as evaluator:
        result = evaluator.evaluate(last_checkpoint)
    logits, labels = _numpy_logits(_config(eval_run), last_checkpoint)
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


def _eval_reporter(folder) -> Reporter:
    return Reporter(
        str(folder), rundir.EVAL_LOG, metrics=False, progress=False, summary_subdir="eval"
    )


def test_one_graph_for_all_checkpoints_in_step_order(eval_run, tmp_path, capsys):
    evaluator = _evaluator(eval_run)
    ops_before = len(evaluator.graph.get_operations())
    reporter = _eval_reporter(tmp_path)
    try:
        rows = evaluation._evaluate_each(
            evaluator, rundir.list_checkpoints(eval_run), reporter, str(tmp_path), ""
        )
    finally:
        reporter.close()
        evaluator.close()
    assert evaluator.graph.finalized
    assert len(evaluator.graph.get_operations()) == ops_before
    assert [r["step"] for r in rows] == [50, 100, 150]
    assert [r["images"] for r in rows] == [360] * 3
    assert all(r["top1"] <= r["top5"] for r in rows)
    table = capsys.readouterr().out.splitlines()
    assert table[0] == results.HEADER
    assert table[0].split() == "step epoch top1 % top5 % loss checkpoint_time(UTC)".split()
    assert [int(line.split()[0]) for line in table[1:]] == [50, 100, 150]
    # The table is in percent (as TF-slim and torchvision print it), the files in fractions.
    for line, row in zip(table[1:], rows):
        assert line.split()[2:4] == [f"{100 * row['top1']:.2f}", f"{100 * row['top5']:.2f}"]
    with open(tmp_path / rundir.results_name()) as f:
        saved = json.load(f)
    assert [r["step"] for r in saved] == [50, 100, 150]
    assert [r["top1"] for r in saved] == [r["top1"] for r in rows]
    with open(tmp_path / rundir.curve_name(), "rb") as f:
        assert f.read(8) == PNG


def test_checkpoints_deleted_by_rotation_are_skipped(eval_run, tmp_path, capsys):
    folder = tmp_path / "run"
    shutil.copytree(eval_run, folder)
    first, middle, last = rundir.list_checkpoints(str(folder))
    # Listed, then rotated away before being read: one completely, one half-way (index left).
    for name in os.listdir(folder):
        if name.startswith(os.path.basename(first) + "."):
            os.remove(folder / name)
    for name in os.listdir(folder):
        if name.startswith(os.path.basename(middle) + ".data"):
            os.remove(folder / name)
    evaluator = _evaluator(str(folder))
    reporter = _eval_reporter(tmp_path)
    try:
        rows = evaluation._evaluate_each(
            evaluator, [first, middle, last], reporter, str(tmp_path), ""
        )
    finally:
        reporter.close()
        evaluator.close()
    assert [r["checkpoint"] for r in rows] == [last]
    out = capsys.readouterr().out
    assert f"skipped: {first} was deleted before it was read" in out
    assert f"skipped: {middle} was deleted before it was read" in out


def test_settings_come_from_config_json_and_flags_override(eval_run, last_checkpoint, tmp_path):
    with open(os.path.join(eval_run, "config.json")) as f:
        saved = json.load(f)
    config = _config(eval_run, "--eval_batch_size", "7", "--arch", "vgg19")
    assert (config.network.arch, config.input.eval_batch_size) == ("vgg19", 7)
    assert config.network.class_num == saved["class_num"] == 10
    assert config.network.width_multiplier == saved["width_multiplier"] == 0.125
    assert config.input.data_dir == saved["data_dir"]
    assert config.network.preprocess == saved["preprocess"]
    # A folder without config.json needs --data_dir; the network is the one the checkpoint's
    # variables describe, the class count also the dataset's dataset_info.json.
    with pytest.raises(UsageError, match=r"--data_dir is required \(no config.json in "):
        _config(str(tmp_path))
    for path in glob.glob(last_checkpoint + ".*"):
        shutil.copy(path, tmp_path)
    bare = _config(str(tmp_path), "--data_dir", saved["data_dir"]).network
    assert (bare.arch, bare.class_num, bare.image_size, bare.width_multiplier) == (
        "vgg16",
        10,
        SIZE,
        0.125,
    )


def test_which_checkpoints_a_command_line_names(eval_run, tmp_path, monkeypatch):
    found = rundir.list_checkpoints(eval_run)
    monkeypatch.chdir(tmp_path)  # no runs/ here

    def targets(*flags):
        folder, paths = evaluation.targets(cli.eval_args(list(flags)).options)
        return folder, list(paths)

    assert targets("--ckpt", eval_run) == (eval_run, found[-1:])
    assert targets("--ckpt", found[0]) == (eval_run, found[:1])
    assert targets("--all-ckpts", "--eval_dir", eval_run) == (eval_run, found)
    assert targets("--all_ckpts", "--ckpt", eval_run + "/") == (eval_run, found)
    assert targets("--eval_dir", eval_run) == (eval_run, found)  # every one, as the reference's
    one = f"{found[0]} is one checkpoint; name its folder to evaluate every one"
    for flags, message in [
        ((), "no run with checkpoints under runs/"),
        (("--eval_dir", found[0]), one),
        (("--ckpt", found[0], "--eval_dir", eval_run), "give one of them"),
        (("--all-ckpts", "--ckpt", found[0]), one),
        (("--best", "--all-ckpts", "--ckpt", eval_run), "--best names one checkpoint"),
        (("--best", "--watch", "--ckpt", eval_run), "not with --all-ckpts, --eval_dir or --watch"),
        (("--ckpt", str(tmp_path / "nope")), "checkpoint not found"),
        (("--ckpt", str(tmp_path)), f"no model.ckpt-* checkpoints in {tmp_path}"),
    ]:
        with pytest.raises(UsageError, match=re.escape(message)):
            targets(*flags)


def _save_untrained(folder, network, steps=(1,), poison_at=None) -> None:
    """Checkpoints model.ckpt-<step> of an untrained ``network``; from step ``poison_at`` on,
    the classifier's biases are NaN."""
    with tf.Graph().as_default() as graph:
        model = model_lib.build(network)
        bias = model.get_layer("predictions").bias
        poison = v1.assign(bias, tf.fill(bias.shape, float("nan")))
        saver = v1.train.Saver(model.weights)
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            for step in steps:
                if step == poison_at:
                    sess.run(poison)
                saver.save(sess, os.path.join(folder, rundir.CHECKPOINT_PREFIX), global_step=step)


def test_mode_evaluate_exit_code_for_nan_weights(demo_dir, tmp_path, capsys):
    """run_train.py --mode evaluate: every checkpoint of --log_dir; a NaN network is exit 3."""
    network = demo_config(data_dir=demo_dir, width_multiplier=0.0625).network
    _save_untrained(tmp_path, network, steps=(1, 2), poison_at=2)
    argv = ["--preset", "demo", "--mode", "evaluate", "--log_dir", str(tmp_path)]
    assert commands.main("train", argv + ["--data_dir", demo_dir]) == EXIT_NONFINITE
    out = capsys.readouterr().out.splitlines()
    header = out.index(results.HEADER)
    assert [int(line.split()[0]) for line in out[header + 1 :]] == [1, 2]
    with open(tmp_path / rundir.results_name()) as f:
        rows = json.load(f)
    assert [r["images"] for r in rows] == [360, 360]
    assert np.isfinite(rows[0]["loss"]) and np.isnan(rows[1]["loss"])


def test_run_eval_has_no_training_only_flags():
    # --dense_init only shapes the initial weights: a checkpoint's evaluation cannot use it.
    with pytest.raises(UsageError, match="--dense_init"):
        cli.eval_args(["--ckpt", "runs/x", "--dense_init", "he"])
    args = cli.eval_args(["--ckpt", "runs/x", "--tfds_data_dir", "/tfds"])
    assert args.settings["tfds_data_dir"] == "/tfds"


def test_epochs_are_those_training_recorded_with_its_global_batch(eval_run, tmp_path):
    """A 2-replica run counts 1437 // (2 * 32) = 22 steps per epoch and records them in its
    config.json; its evaluation gives the epochs in those."""
    last = rundir.list_checkpoints(eval_run)[-1]
    for path in glob.glob(last + ".*"):
        shutil.copy(path, tmp_path)
    saved = rundir.read_config(eval_run)
    global_batch = 2 * saved["batch_size"]
    per_epoch = 1437 // global_batch  # the demo's 1437 training images
    recorded = {"steps_per_epoch": per_epoch, "global_batch": global_batch, "train_images": 1437}
    rundir.write_config(str(tmp_path), saved, recorded)
    (row,) = _evaluate(str(tmp_path), eval_dir=str(tmp_path))
    assert row["epoch"] == round(150 / per_epoch, 3) == 6.818
    with open(tmp_path / rundir.results_name()) as f:
        assert json.load(f)[0]["epoch"] == row["epoch"]


# ---------------------------------------------------------------------------------------------
# The results files


@pytest.fixture
def run_copy(eval_run, tmp_path) -> str:
    """A copy of eval_run that the test may write into."""
    folder = str(tmp_path / "run")
    shutil.copytree(eval_run, folder)
    return folder


def _read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_other_settings_write_their_own_file_and_metrics_stay_trainings(run_copy):
    """The run's own protocol is eval_results.json; a one-off ten-crop evaluation goes beside it
    (eval_results.crops10.json); neither touches training's metrics.jsonl."""
    metrics = _read(os.path.join(run_copy, rundir.METRICS_FILE))
    (own,) = _evaluate(run_copy, ckpt=run_copy)
    own_file = os.path.join(run_copy, rundir.results_name())
    before = _read(own_file)
    (ten,) = _evaluate(run_copy, ckpt=run_copy, eval_crops=10)
    assert _read(own_file) == before
    assert _read(os.path.join(run_copy, rundir.METRICS_FILE)) == metrics
    with open(os.path.join(run_copy, rundir.results_name("crops10"))) as f:
        (saved,) = json.load(f)
    assert (saved["step"], saved["crops"], saved["images"]) == (150, 10, 360)
    assert saved["top1"] == ten["top1"] and saved["loss"] == ten["loss"]
    assert json.loads(before)[0]["crops"] == 1
    assert ten["loss"] != own["loss"]  # another protocol, not the same numbers twice
    assert rundir.results_name("crops10", ".csv") in os.listdir(run_copy)


def test_evaluating_a_checkpoint_again_replaces_its_row_and_keeps_the_others(run_copy):
    _evaluate(run_copy, eval_dir=run_copy)
    path = os.path.join(run_copy, rundir.results_name())
    with open(path) as f:
        first = json.load(f)
    assert [r["step"] for r in first] == [50, 100, 150]
    marked = [{**r, "loss": 100.0 + r["step"]} for r in first]  # to tell old rows from new
    with open(path, "w") as f:
        json.dump(marked, f)
    (again,) = _evaluate(run_copy, ckpt=rundir.checkpoint_prefix(run_copy, 100))
    with open(path) as f:
        merged = json.load(f)
    assert [r["step"] for r in merged] == [50, 100, 150]
    assert [r["loss"] for r in merged] == [150.0, again["loss"], 250.0]
    assert again["loss"] == pytest.approx(first[1]["loss"], rel=1e-6)
    with open(os.path.join(run_copy, rundir.results_name(suffix=".csv"))) as f:
        assert [float(r["loss"]) for r in csv.DictReader(f)] == [r["loss"] for r in merged]


def test_per_class_writes_accuracy_per_class_and_the_confusion_matrix(
    eval_run, last_checkpoint, tmp_path
):
    (row,) = _evaluate(eval_run, tmp_path, ckpt=last_checkpoint, per_class=True)
    base = tmp_path / rundir.per_class_name(150)
    with open(f"{base}.confusion.json") as f:
        confusion = json.load(f)
    matrix = np.array(confusion["matrix"])
    assert matrix.shape == (10, 10)
    assert matrix.sum() == row["images"] == 360
    assert np.trace(matrix) == round(row["top1"] * 360)
    # Rows are labels, columns predictions: the same matrix as the numpy computation's.
    logits, labels = _numpy_logits(_config(eval_run), last_checkpoint)
    expected = np.zeros((10, 10), np.int64)
    np.add.at(expected, (labels, np.argmax(logits, axis=1)), 1)
    np.testing.assert_array_equal(matrix, expected)
    assert (confusion["rows"], confusion["columns"]) == ("label", "prediction")
    with open(f"{base}.per_class.csv") as f:
        per_class = list(csv.DictReader(f))
    assert [int(r["class"]) for r in per_class] == list(range(10))
    assert [r["name"] for r in per_class] == confusion["classes"]
    assert confusion["classes"][:2] == ["zero", "one"]  # the dataset's labels.txt
    assert [int(r["images"]) for r in per_class] == list(matrix.sum(axis=1))
    assert [int(r["correct"]) for r in per_class] == list(np.diag(matrix))
    for r in per_class:
        assert float(r["top1"]) == pytest.approx(int(r["correct"]) / int(r["images"]), abs=1e-6)
    assert _read(f"{base}.confusion.png")[:8] == PNG


def test_no_usable_validation_image_is_an_error_never_zero_percent(
    shard_writer, train_tiny, tmp_path
):
    """--skip_corrupt over a validation split of only bad records: one line naming the data
    (exit 2), in training's evaluation and in run_eval.py; no result, no best checkpoint."""
    data, log_dir = tmp_path / "data", tmp_path / "run"
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(16)]
    shard_writer(str(data), images, [k % 10 + 1 for k in range(16)], num_classes=10)
    shard_writer(str(data), [b"no jpeg"] * 3, [1, 2, 3], split="validation", num_classes=10)
    message = rf"^{data}: none of the 3 validation records could be evaluated \(--skip_corrupt"
    with pytest.raises(UsageError, match=message):
        train_tiny(
            log_dir, data_dir=str(data), mode="train_and_evaluate", skip_corrupt=True,
            batch_size=8, max_train_steps=2,
        )  # fmt: skip
    assert rundir.latest_checkpoint(str(log_dir)).endswith("model.ckpt-2")
    assert rundir.read_best(str(log_dir)) is None
    assert not any("eval_top1" in r for r in read_metrics(str(log_dir)))
    with pytest.raises(UsageError, match=message):
        _evaluate(str(log_dir), settings={"skip_corrupt": True}, ckpt=str(log_dir))
    assert not glob.glob(str(log_dir / "eval_results*"))


def test_a_shard_longer_than_listed_stops_the_evaluation_in_one_line(
    eval_run, tmp_path, shard_writer
):
    """12 records where dataset_info.json lists 5: one line naming the shard, not "evaluated 8
    images, the split has 5"."""
    from conftest import run_script

    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(12)]
    shard = shard_writer(str(data), images, [1 + k % 10 for k in range(12)], split="validation")
    meta = json.loads((data / "dataset_info.json").read_text())
    meta["files"]["validation-00000-of-00001"] = meta["splits"]["validation"] = 5
    (data / "dataset_info.json").write_text(json.dumps(meta))
    out = tmp_path / "eval"
    proc = run_script("run_eval.py", "--ckpt", eval_run, "--data_dir", data, "--output", out)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert (
        last
        == f"error: {shard[0]}: 12 records, its dataset lists 5: not the shard that was written"
    )
