"""run_eval.py as a user runs it (real subprocesses): the table, eval_results.json/.csv, the
curve and TensorBoard events agree; one graph for every checkpoint; one-line errors with exit
code 2; a progress bar only on a terminal; --watch as a side-car; the demo run's accuracy;
run_train.py --mode evaluate with the run's config.json.
"""

from __future__ import annotations

import csv
import fcntl
import glob
import json
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios
import time

import numpy as np
import pytest
from conftest import demo_config

from vgg_keras import config as config_lib
from vgg_keras import results, rundir
from vgg_keras.api import build_vgg
from vgg_keras.compat import tf, v1
from vgg_keras.data import pipeline, preprocess, schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = results.HEADER.split()  # step epoch top1 % top5 % loss checkpoint_time(UTC)
RESULTS_JSON = rundir.results_name()


def _table(stdout: str) -> list[list[str]]:
    """The rows of the evaluation table in ``stdout`` (header checked, other lines ignored)."""
    lines = stdout.splitlines()
    start = [i for i, line in enumerate(lines) if line.split() == HEADER]
    assert len(start) == 1, stdout
    rows = []
    for line in lines[start[0] + 1 :]:
        fields = line.split()
        if len(fields) == 7 and fields[0].isdigit():
            rows.append(fields)
    return rows


def _assert_usage_error(proc, *fragments: str) -> None:
    """Exit code 2, one line on stderr naming the problem, no traceback."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_all_ckpts_table_json_csv_and_tensorboard_agree(eval_run, tmp_path, script_runner):
    out = tmp_path / "out"
    proc = script_runner(
        "run_eval.py", "--all-ckpts", "--eval_dir", eval_run, "--output", out,
        "--eval_batch_size", "7",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Built once for the three checkpoints: one graph line, three rows, steps in order.
    assert proc.stdout.count("eval graph built in") == 1
    rows = _table(proc.stdout)
    assert [int(r[0]) for r in rows] == [50, 100, 150]
    assert "it/s" not in proc.stderr and "batch/s" not in proc.stderr  # no bar off a terminal

    with open(out / RESULTS_JSON) as f:
        found = json.load(f)
    with open(out / rundir.results_name(suffix=".csv")) as f:
        table = list(csv.DictReader(f))
    assert [set(r) for r in found] == [set(results.KEYS + results.SETTINGS)] * 3
    assert [r["checkpoint"] for r in found] == rundir.list_checkpoints(eval_run)
    assert len(found) == len(table) == len(rows)
    # The run learnt on this stack: ten classes (chance 10%), about 70% after 150 steps.
    assert found[-1]["top1"] >= 0.5, [r["top1"] for r in found]
    for result, row, line in zip(found, table, rows):
        assert result["images"] == int(row["images"]) == 360  # 360 = 51 * 7 + 3
        assert 0 <= result["top1"] <= result["top5"] <= 1
        assert row["checkpoint"] == result["checkpoint"]
        for key in ("step", "epoch", "top1", "top5", "loss"):
            assert float(row[key]) == result[key]  # the CSV holds the JSON's exact values
        # What the run's own evaluation was: one crop, its resize, input and data.
        assert (result["crops"], result["resize"], result["input_mode"]) == (
            1,
            "aspect",
            "standard",
        )
        assert result["data_dir"] == rundir.read_config(eval_run)["data_dir"] == row["data_dir"]
        # The table shows the accuracies in percent, the files keep fractions.
        assert line[:5] == [
            str(result["step"]),
            f"{result['epoch']:.1f}",
            f"{100 * result['top1']:.2f}",
            f"{100 * result['top5']:.2f}",
            f"{result['loss']:.4f}",
        ]
    with open(out / rundir.curve_name(), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(out / rundir.EVAL_LOG) as f:
        assert _table(f.read()) == rows

    scalars = {}
    for path in glob.glob(str(out / "eval" / "events.out.tfevents.*")):
        for event in v1.train.summary_iterator(path):
            for value in event.summary.value:
                scalars[(value.tag, event.step)] = tf.make_ndarray(value.tensor).item()
    for result in found:
        assert scalars[("eval_top1", result["step"])] == pytest.approx(result["top1"])
        assert scalars[("eval_top5", result["step"])] == pytest.approx(result["top5"])


def test_one_checkpoint_with_a_progress_bar_on_a_terminal(eval_run, tmp_path):
    prefix = rundir.list_checkpoints(eval_run)[1]
    command = [sys.executable, os.path.join(ROOT, "run_eval.py"), "--ckpt", prefix]
    command += ["--output", str(tmp_path)]
    master, terminal = pty.openpty()
    # A new pty is 0 columns wide, and tqdm draws nothing into 0 columns.
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=terminal, text=True, cwd=ROOT)
    os.close(terminal)
    stderr = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        stderr += chunk
    os.close(master)
    stdout = proc.stdout.read()
    assert proc.wait(timeout=120) == 0, stdout + stderr.decode(errors="replace")
    assert [int(r[0]) for r in _table(stdout)] == [100]
    assert "step 100" in stderr.decode() and "batch" in stderr.decode()
    assert not os.path.exists(tmp_path / rundir.curve_name())  # a curve needs two points


def _vgg19_checkpoint(folder, like_run: str) -> str:
    """An untrained VGG19 checkpoint with the run's other settings and a config.json saying so."""
    with open(os.path.join(like_run, "config.json")) as f:
        config = json.load(f)
    config["arch"] = "vgg19"
    os.makedirs(folder)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    with tf.Graph().as_default() as graph:
        model = build_vgg(
            "vgg19", config["class_num"], config["image_size"], config["width_multiplier"]
        )
        saver = v1.train.Saver(model.weights)
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            return saver.save(sess, os.path.join(folder, rundir.CHECKPOINT_PREFIX), global_step=7)


def test_mismatched_architecture_is_one_line(eval_run, tmp_path, script_runner):
    proc = script_runner("run_eval.py", "--ckpt", eval_run, "--arch", "vgg19", "--output", tmp_path)
    _assert_usage_error(proc, "checkpoint has vgg16", "model is vgg19", "model.ckpt-150")
    # The other way round, a VGG19 checkpoint holds every VGG16 variable: still refused.
    vgg19 = _vgg19_checkpoint(str(tmp_path / "vgg19"), eval_run)
    proc = script_runner("run_eval.py", "--ckpt", vgg19, "--arch", "vgg16")
    _assert_usage_error(proc, "checkpoint has vgg19", "model is vgg16")


def test_empty_folder_is_one_line(tmp_path, script_runner):
    proc = script_runner("run_eval.py", "--all-ckpts", "--eval_dir", tmp_path)
    _assert_usage_error(proc, f"no model.ckpt-* checkpoints in {tmp_path}")


def _copy_checkpoint(prefix: str, folder) -> None:
    """Data shards first, index last, as TensorFlow writes them."""
    for path in sorted(glob.glob(prefix + ".*"), key=lambda p: p.endswith(".index")):
        shutil.copy(path, folder)


def test_watch_evaluates_a_checkpoint_written_later_then_stops(eval_run, tmp_path):
    folder = tmp_path / "training"
    folder.mkdir()
    shutil.copy(os.path.join(eval_run, "config.json"), folder)
    first, second, _ = rundir.list_checkpoints(eval_run)
    _copy_checkpoint(first, folder)
    timeout = 4.0
    command = [
        sys.executable, os.path.join(ROOT, "run_eval.py"), "--watch", "--eval_dir", str(folder),
        "--watch_timeout", str(timeout),
    ]  # fmt: skip
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    results_file = folder / RESULTS_JSON
    deadline = time.monotonic() + 120
    while not results_file.exists():  # the first checkpoint has been evaluated
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    _copy_checkpoint(second, folder)
    written = time.monotonic()
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stdout + stderr
    assert time.monotonic() - written >= timeout  # it waited for more before stopping
    assert [int(r[0]) for r in _table(stdout)] == [50, 100]
    assert f"no new checkpoint for {timeout:g} s: stopped watching" in stdout
    with open(results_file) as f:
        assert [r["step"] for r in json.load(f)] == [50, 100]


# ---------------------------------------------------------------------------------------------
# Fewer than five classes, the image count, ten crops


def _small_run(folder, data_dir: str, classes: int) -> str:
    """An untrained tiny VGG16 checkpoint (model.ckpt-1) with a config.json naming the data."""
    config = demo_config(data_dir=data_dir, class_num=classes, width_multiplier=0.0625).flat()
    os.makedirs(folder)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    with tf.Graph().as_default() as graph:
        model = build_vgg("vgg16", classes, config["image_size"], config["width_multiplier"])
        saver = v1.train.Saver(model.weights)
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            return saver.save(sess, os.path.join(folder, rundir.CHECKPOINT_PREFIX), global_step=1)


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory, shard_writer) -> str:
    """12 random 32 px validation images of 3 classes in one shard."""
    folder = str(tmp_path_factory.mktemp("three_classes"))
    rng = np.random.default_rng(3)
    images = list(rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8))
    shard_writer(folder, images, [1 + i % 3 for i in range(12)], split="validation")
    return folder


def test_top5_is_top_k_of_all_classes_when_there_are_fewer_than_five(
    three_classes, tmp_path, script_runner
):
    run = _small_run(tmp_path / "run", three_classes, classes=3)
    proc = script_runner("run_eval.py", "--ckpt", run, "--output", tmp_path / "out")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(tmp_path / "out" / RESULTS_JSON) as f:
        (result,) = json.load(f)
    # top-min(5, 3): every label is among the three best of three classes.
    assert result["images"] == 12 and result["top5"] == 1.0 and result["top1"] < 1.0


@pytest.mark.parametrize(("claimed", "batch", "evaluated"), [(13, "5", 12), (11, "5", 12)])
def test_an_image_count_that_disagrees_with_the_split_is_an_error(
    three_classes, tmp_path, script_runner, claimed, batch, evaluated
):
    data = tmp_path / "data"
    shutil.copytree(three_classes, data)
    meta = json.loads((data / "dataset_info.json").read_text())
    (shard,) = meta["files"]
    meta["files"][shard] = meta["splits"]["validation"] = claimed  # the shard was replaced
    (data / "dataset_info.json").write_text(json.dumps(meta))
    run = _small_run(tmp_path / "run", str(data), classes=3)
    proc = script_runner("run_eval.py", "--ckpt", run, "--eval_batch_size", batch)
    _assert_usage_error(proc)
    # The shard's count is checked as it is read (a shard replaced since it was listed).
    assert proc.stderr.strip() == (
        f"error: {data / shard}: {evaluated} records, its dataset lists {claimed}: not the "
        "shard that was written"
    )
    assert not os.path.exists(os.path.join(run, RESULTS_JSON))


def _ten_crop_logits(config: dict, checkpoint: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean logits over ten crops cut by hand (numpy slices of the resized image) and the
    labels, for every validation image, one crop at a time through the restored model."""
    size = config["image_size"]
    side = round(size * preprocess.EVAL_RESIZE_RATIO)
    inp = config_lib.resolve(saved=config, need_data=False).input
    split = pipeline.load_split(inp, "validation")
    crops, labels = [], []
    for serialized in tf.data.TFRecordDataset(list(split.files)):
        jpeg, label, _ = schema.parse(serialized)
        decoded = tf.io.decode_jpeg(jpeg, channels=3)
        resized = preprocess.resize_shorter_side(decoded, side, "standard")
        pixels = preprocess.normalize(resized, "imagenet").numpy()
        bottom, right = pixels.shape[0] - size, pixels.shape[1] - size
        corners = [(0, 0), (0, right), (bottom, 0), (bottom, right), (bottom // 2, right // 2)]
        five = [pixels[t : t + size, x : x + size] for t, x in corners]
        crops.extend(five + [crop[:, ::-1] for crop in five])
        labels.append(int(label))
    with tf.Graph().as_default() as graph:
        model = build_vgg(config["arch"], config["class_num"], size, config["width_multiplier"])
        images = v1.placeholder(tf.float32, [None, size, size, 3])
        logits = model(images, training=False)
        saver = v1.train.Saver(model.weights)
        with v1.Session(graph=graph) as sess:
            saver.restore(sess, checkpoint)
            each = np.concatenate(
                [sess.run(logits, {images: np.stack(crops[i : i + 500])}) for i in
                 range(0, len(crops), 500)]
            )  # fmt: skip
    return each.reshape(len(labels), 10, -1).mean(axis=1), np.array(labels)


def test_ten_crops_through_the_cli_are_the_mean_over_ten_crops_cut_by_hand(
    eval_run, tmp_path, script_runner
):
    prefix = rundir.list_checkpoints(eval_run)[-1]
    proc = script_runner(
        "run_eval.py", "--ckpt", prefix, "--eval_crops", "10", "--output", tmp_path,
        "--eval_batch_size", "32",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "10 crop(s)" in proc.stdout
    # Not the run's own protocol (one crop): its own file, beside eval_results.json.
    assert not os.path.exists(tmp_path / RESULTS_JSON)
    with open(tmp_path / rundir.results_name("crops10")) as f:
        (result,) = json.load(f)
    assert result["crops"] == 10
    with open(os.path.join(eval_run, "config.json")) as f:
        config = json.load(f)
    logits, labels = _ten_crop_logits(config, prefix)
    assert result["images"] == len(labels) == 360
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    assert result["loss"] == pytest.approx(-log_probs[np.arange(360), labels].mean(), rel=1e-5)
    # Top-k can differ only for an image whose k-th and (k+1)-th logits nearly tie.
    ranked = -np.sort(-logits, axis=1)
    for k, key in ((1, "top1"), (5, "top5")):
        hits = [label in np.argsort(-row)[:k] for row, label in zip(logits, labels)]
        near_ties = int(np.sum(ranked[:, k - 1] - ranked[:, k] < 1e-4))
        assert abs(result[key] * 360 - sum(hits)) <= near_ties, key


# ---------------------------------------------------------------------------------------------
# run_train.py --mode evaluate: run_eval.py --eval_dir with the run's config.json


def test_mode_evaluate_takes_the_network_from_the_runs_config_json(
    three_classes, tmp_path, script_runner
):
    """No --preset, --width_multiplier or --image_size: the run's config.json says 0.0625 and
    32 px (the ImageNet defaults, 1.0 and 224 px, could not restore its checkpoint)."""
    run = os.path.dirname(_small_run(tmp_path / "run", three_classes, classes=3))
    proc = script_runner("run_train.py", "--mode", "evaluate", "--eval_dir", run)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "vgg16, 3 classes, 32 px, width 0.0625" in proc.stdout
    assert [int(r[0]) for r in _table(proc.stdout)] == [1]
    with open(os.path.join(run, RESULTS_JSON)) as f:
        (result,) = json.load(f)
    assert (result["step"], result["images"]) == (1, 12)
    assert not os.path.exists(os.path.join(run, rundir.METRICS_FILE))


def test_mode_evaluate_with_synthetic_data_is_one_line(tmp_path, script_runner):
    proc = script_runner(
        "run_train.py", "--mode", "evaluate", "--synthetic", "--eval_dir", tmp_path
    )
    _assert_usage_error(proc, "--synthetic", "--mode evaluate needs the validation data")
    assert os.listdir(tmp_path) == []
