"""What a run tells its user: the reference's log line, metrics.jsonl, TensorBoard scalars,
config.json, and log lines that fall on multiples of --display_every whatever the loop sinking.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import time

import numpy as np
import pytest

from vgg_keras.compat import tf
from vgg_keras.reporting import Reporter, format_train_line, read_metrics

REFERENCE_FORMAT = "step:%6i  epoch:%5.1f  FPS:%7.1f  loss:%6.3f  total_loss:%6.3f  lr:%7.5f"


@pytest.mark.parametrize(
    "values",
    [
        (0, 0.0, 0.0, 0.0, 0.0, 0.0),
        (100, 2.2271, 715.64, 1.85812, 2.15549, 0.029114),
        (898, 20.0, 806.5, 0.595, 0.890, 1e-9),
        (1_234_567, 150.04, 12345.67, 12.3456, 123.4567, 0.1),
        (
            5,
            np.float64(0.11),
            np.float32(3.25),
            np.float32(2.3026),
            np.float32(2.3771),
            np.float32(4e-4),
        ),
        (7, 0.2, 1.0, float("nan"), float("inf"), 0.01),
    ],
)
def test_log_line_is_the_reference_format(values):
    assert format_train_line(*values) == REFERENCE_FORMAT % values


def scalar_events(log_dir: str) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from every TensorBoard event file in ``log_dir``."""
    found: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                assert value.metadata.plugin_data.plugin_name == "scalars"
                scalar = float(tf.make_ndarray(value.tensor))
                found.setdefault(value.tag, []).append((event.step, scalar))
    return found


def test_reporter_writes_console_log_file_metrics_and_tensorboard(tmp_path, capsys):
    reporter = Reporter(str(tmp_path), "run.log", progress=False)
    reporter.train_step(10, 0.5, 100.0, np.float32(2.5), np.float32(2.75), np.float32(0.01))
    reporter.train_step(20, 1.0, 200.0, 2.0, 2.25, 0.02, skipped_steps=1)
    reporter.metrics(20, epoch=1.0, eval_top1=0.75)
    reporter.close()

    lines = [format_train_line(10, 0.5, 100.0, 2.5, 2.75, 0.01)]
    lines.append(format_train_line(20, 1.0, 200.0, 2.0, 2.25, 0.02))
    assert capsys.readouterr().out.splitlines() == lines
    assert (tmp_path / "run.log").read_text().splitlines() == lines

    records = read_metrics(str(tmp_path))
    assert [r["step"] for r in records] == [10, 20, 20]
    first = records[0]
    assert set(first) == {"step", "epoch", "fps", "loss", "total_loss", "lr"}
    assert (first["epoch"], first["fps"], first["loss"]) == (0.5, 100.0, 2.5)
    assert first["lr"] == pytest.approx(0.01)
    assert records[1]["skipped_steps"] == 1 and records[2] == {
        "step": 20,
        "epoch": 1.0,
        "eval_top1": 0.75,
    }

    events = scalar_events(str(tmp_path))
    assert set(events) == {"fps", "loss", "total_loss", "lr", "skipped_steps", "eval_top1"}
    assert events["loss"] == [(10, 2.5), (20, 2.0)]
    assert events["eval_top1"] == [(20, 0.75)]


def test_metrics_stay_valid_json_with_nan_loss_and_a_resumed_run_appends(tmp_path):
    for step in (1, 2):  # two runs in the same folder, as a resume does
        reporter = Reporter(str(tmp_path), progress=False)
        reporter.train_step(step, 0.1, 1.0, float("nan"), float("inf"), 0.1)
        reporter.close()
    records = read_metrics(str(tmp_path))
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["loss"] == "nan" and records[0]["total_loss"] == "inf"
    assert math.isnan(float(records[1]["loss"]))
    assert len((tmp_path / "train.log").read_text().splitlines()) == 2


def test_only_the_chief_writes_files(tmp_path, capsys):
    reporter = Reporter(str(tmp_path / "worker1"), is_chief=False, progress=False)
    reporter.train_step(1, 0.1, 1.0, 2.0, 2.0, 0.1)
    reporter.close()
    assert not (tmp_path / "worker1").exists()
    assert capsys.readouterr().out.startswith("step:     1")


def test_a_run_logs_on_display_multiples_and_writes_its_resolved_config(train_tiny, tmp_path):
    # 4 sunk steps per call do not divide the 3-step display interval: calls are cut to fit.
    code, config = train_tiny(tmp_path, max_train_steps=8, iterations_per_loop=4, display_every=3)
    assert code == 0
    records = read_metrics(str(tmp_path))
    assert [r["step"] for r in records] == [3, 6, 8]
    for record in records:
        assert record["epoch"] == pytest.approx(record["step"] * 32 / 1437)
        assert record["fps"] > 0 and record["total_loss"] > record["loss"] > 0
    log_lines = (tmp_path / "train.log").read_text().splitlines()
    # The interval shorter than the loop is said once, before the first log line.
    assert log_lines[0].startswith("warning: --display_every 3 < --iterations_per_loop 4")
    log_lines = [line for line in log_lines if line.startswith("step:")]
    assert log_lines[:3] == [
        format_train_line(r["step"], r["epoch"], r["fps"], r["loss"], r["total_loss"], r["lr"])
        for r in records
    ]
    with open(tmp_path / "config.json") as f:
        assert json.load(f) == dataclasses.asdict(config)
    assert scalar_events(str(tmp_path))["lr"] == [
        (r["step"], pytest.approx(r["lr"])) for r in records
    ]


def test_fps_counts_training_time_only_across_an_evaluation_and_checkpoints(
    train_tiny, tmp_path, capsys
):
    """Each FPS is its interval's images over the training time of those steps: the
    evaluation at step 15 and the checkpoints every 5 steps fall inside intervals and are not
    counted, so the line after them reads like the others (it used to read about twice as
    fast: the time restarted after the evaluation, the step count did not)."""
    every_15_steps = 15 * 32 / 1437  # epochs between evaluations
    started = time.perf_counter()
    code, _ = train_tiny(tmp_path, mode="train_and_evaluate", epochs_between_evals=every_15_steps,
                         max_train_steps=40, display_every=10, save_checkpoints_steps=5)  # fmt: skip
    wall = time.perf_counter() - started
    assert code == 0
    lines = [r for r in read_metrics(str(tmp_path)) if "fps" in r]
    assert [r["step"] for r in lines] == [10, 20, 30, 40]
    for r in lines:
        assert r["fps"] == pytest.approx(r["interval_steps"] * 32 / r["interval_seconds"])
    # First calls (the graph's warm-up) are left out of the first line; later lines count every
    # step.
    assert [r["interval_steps"] for r in lines[1:]] == [10, 10, 10]
    assert sum(r["interval_seconds"] for r in lines) < wall
    # The wall-clock rate includes start-up, evaluations and saves: a lower bound, and no
    # interval can be more than a sane factor faster than the run as a whole.
    wall_rate = 40 * 32 / wall
    assert all(wall_rate < r["fps"] < 100 * wall_rate for r in lines), (wall_rate, lines)
    out = capsys.readouterr().out.splitlines()
    summary = [line for line in out if line.startswith("training FPS:")]
    images = 30 * 32
    mean = images / sum(r["interval_seconds"] for r in lines[1:])
    assert summary == [
        f"training FPS: {mean:.1f} images/s (mean over {images} images in 30 steps, "
        f"{images / mean:.1f} s of training; first log interval, evaluation and checkpoints "
        "not counted)"
    ]
    assert out[-1].startswith("done: 40 steps")
