"""What a run tells its user: a timestamped log line with the reference's fields, then top-1 and
the ETA; metrics.jsonl, TensorBoard scalars, config.json; plain progress lines where stderr is
not a terminal; and log lines that fall on multiples of --display_every whatever the loop sinking.
"""

from __future__ import annotations

import datetime
import glob
import json
import math
import os
import re
import sys
import time

import numpy as np
import pytest

from vgg_keras import reporting
from vgg_keras.compat import tf
from vgg_keras.reporting import Reporter, format_train_line, read_metrics
from vgg_keras.train_graph import StepOutputs

REFERENCE_FORMAT = "step:%6i  epoch:%5.1f  FPS:%7.1f  loss:%6.3f  total_loss:%6.3f  lr:%7.5f"
# <date time>  <the reference's fields>  top1: ..%  eta H:MM:SS
LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)  (.*)  top1:(.{5})%  eta (.+)$")


def outputs(loss, total_loss, lr, top1=0.5, grad_norm=float("nan")) -> StepOutputs:
    return StepOutputs(loss, total_loss, lr, True, 0, grad_norm, top1)


def parts(line: str) -> tuple[str, str, str]:
    """(the reference's fields, top-1 text, eta text) of a log line whose timestamp is now."""
    match = LINE.match(line)
    assert match, line
    stamp = datetime.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S")
    assert abs((datetime.datetime.now() - stamp).total_seconds()) < 120, line
    return match[2], match[3], match[4]


@pytest.mark.parametrize(
    "values",
    [
        (0, 0.0, 0.0, 0.0, 0.0, 0.0),
        (100, 2.2271, 715.64, 1.85812, 2.15549, 0.029114),
        (880, 20.0, 806.5, 0.595, 0.890, 1e-9),
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
def test_log_line_is_a_timestamp_the_reference_format_top1_and_eta(values):
    step, epoch, fps, loss, total_loss, lr = values
    line = format_train_line(step, epoch, fps, outputs(loss, total_loss, lr, top1=0.625), 190.4)
    assert parts(line) == (REFERENCE_FORMAT % values, " 62.5", "0:03:10")


@pytest.mark.parametrize(
    "top1, eta, shown",
    [
        (0.0, None, ("  0.0", "-")),
        (1.0, 0.0, ("100.0", "0:00:00")),
        (np.float32(0.03125), 3723.0, ("  3.1", "1:02:03")),
        (0.5, float("inf"), (" 50.0", "-")),
        (0.5, 90061.0, (" 50.0", "1 day, 1:01:01")),
    ],
)
def test_log_line_top1_is_a_percentage_and_eta_hours_minutes_seconds(top1, eta, shown):
    line = format_train_line(1, 0.1, 1.0, outputs(2.0, 2.0, 0.1, top1=top1), eta)
    assert parts(line)[1:] == shown


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
    first_out = outputs(np.float32(2.5), np.float32(2.75), np.float32(0.01), np.float32(0.25))
    before = time.time()
    reporter.train_step(10, 0.5, first_out, 100.0, eta_seconds=np.float64(30.0))
    reporter.train_step(20, 1.0, outputs(2.0, 2.25, 0.02, 0.5, 1.5), 200.0, skipped_steps=1)
    after = time.time()
    reporter.metrics(20, epoch=1.0, eval_top1=0.75)
    reporter.close()

    expected = [
        (REFERENCE_FORMAT % (10, 0.5, 100.0, 2.5, 2.75, 0.01), " 25.0", "0:00:30"),
        (REFERENCE_FORMAT % (20, 1.0, 200.0, 2.0, 2.25, 0.02), " 50.0", "-"),
    ]
    printed = capsys.readouterr().out.splitlines()
    assert [parts(line) for line in printed] == expected
    assert (tmp_path / "run.log").read_text().splitlines() == printed

    records = read_metrics(str(tmp_path))
    assert [r["step"] for r in records] == [10, 20, 20]
    first = records[0]
    assert set(first) == {
        "step", "epoch", "fps", "loss", "total_loss", "lr", "train_top1", "grad_norm",
        "eta_seconds", "time",
    }  # fmt: skip
    assert (first["epoch"], first["fps"], first["loss"], first["train_top1"]) == (
        0.5,
        100.0,
        2.5,
        0.25,
    )
    assert first["lr"] == pytest.approx(0.01) and first["eta_seconds"] == 30.0
    assert first["grad_norm"] == "nan"  # not measured at that step; still valid JSON
    assert before <= first["time"] <= records[1]["time"] <= after
    assert "eta_seconds" not in records[1]  # unknown: left out
    assert records[1]["skipped_steps"] == 1 and records[1]["grad_norm"] == 1.5
    assert records[2] == {"step": 20, "epoch": 1.0, "eval_top1": 0.75}

    events = scalar_events(str(tmp_path))
    assert set(events) == {
        "fps", "loss", "total_loss", "lr", "train_top1", "grad_norm", "eta_seconds",
        "skipped_steps", "eval_top1",
    }  # fmt: skip
    assert events["loss"] == [(10, 2.5), (20, 2.0)]
    assert events["train_top1"] == [(10, 0.25), (20, 0.5)]
    assert events["eta_seconds"] == [(10, 30.0)]
    assert events["eval_top1"] == [(20, 0.75)]


def test_metrics_stay_valid_json_with_nan_loss_and_a_resumed_run_appends(tmp_path):
    for step in (1, 2):  # two runs in the same folder, as a resume does
        reporter = Reporter(str(tmp_path), "train.log", progress=False)
        reporter.train_step(step, 0.1, outputs(float("nan"), float("inf"), 0.1), 1.0)
        reporter.close()
    records = read_metrics(str(tmp_path))
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["loss"] == "nan" and records[0]["total_loss"] == "inf"
    assert math.isnan(float(records[1]["loss"]))
    assert len((tmp_path / "train.log").read_text().splitlines()) == 2


def test_without_metrics_the_reporter_writes_the_log_but_no_metrics_jsonl(tmp_path):
    reporter = Reporter(str(tmp_path), "eval.log", progress=False, metrics=False)
    reporter.print("a line")
    reporter.metrics(5, eval_top1=0.5)
    reporter.close()
    assert (tmp_path / "eval.log").read_text() == "a line\n"
    assert not (tmp_path / "metrics.jsonl").exists()
    assert scalar_events(str(tmp_path)) == {"eval_top1": [(5, 0.5)]}


def test_only_the_chief_writes_files_and_the_step_lines(tmp_path, capsys, monkeypatch):
    """The workers' steps are the chief's: under the launcher or srun, whose output holds every
    worker's, each step is said once; a worker still prints its own lines."""
    monkeypatch.setattr(reporting, "PROGRESS_SECONDS", 0.0)
    reporter = Reporter(str(tmp_path / "worker1"), "train.log", is_chief=False, total_steps=9)
    reporter.train_step(1, 0.1, outputs(2.0, 2.0, 0.1), 1.0)
    reporter.advance(1)
    reporter.print("its own line")
    reporter.close()
    assert not (tmp_path / "worker1").exists()
    assert capsys.readouterr() == ("its own line\n", "")


def test_without_a_terminal_progress_is_a_plain_line_on_stderr(tmp_path, capsys, monkeypatch):
    """nohup or a cluster's log file: no tqdm bar, a timestamped ``progress:`` line every
    PROGRESS_SECONDS instead (none with --progress false); stdout keeps only the log lines."""
    assert not sys.stderr.isatty()  # capsys's stand-in for stderr is no terminal
    monkeypatch.setattr(reporting, "PROGRESS_SECONDS", 0.0)
    reporter = Reporter(str(tmp_path), "train.log", total_steps=880, initial_step=0)
    reporter.advance(220, eta_seconds=75.0)
    reporter.advance(880, eta_seconds=0.0)
    reporter.close()
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 2, lines
    stamp, text = lines[0].split("  ", 1)
    assert abs(time.time() - time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S"))) < 120
    assert text == "progress: step 220/880 (25.0%), eta 0:01:15"
    assert lines[1].endswith("  progress: step 880/880 (100.0%), eta 0:00:00")
    assert "progress" not in (tmp_path / "train.log").read_text()

    quiet = Reporter(str(tmp_path), "train.log", total_steps=880, progress=False)
    quiet.advance(440, eta_seconds=1.0)
    quiet.close()
    assert capsys.readouterr().err == ""


def test_plain_progress_lines_wait_progress_seconds(tmp_path, capsys, monkeypatch):
    now = [1000.0]  # the reporter's clock, moved by hand
    monkeypatch.setattr(reporting.time, "monotonic", lambda: now[0])
    reporter = Reporter(str(tmp_path), "train.log", total_steps=10)
    reporter.advance(1)  # too soon after the start
    now[0] += reporting.PROGRESS_SECONDS
    reporter.advance(2)
    reporter.advance(3)  # too soon after the line of step 2
    reporter.close()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split("  ", 1)[1] for line in lines] == ["progress: step 2/10 (20.0%), eta -"]


def test_a_run_logs_on_display_multiples_and_writes_its_resolved_config(train_tiny, tmp_path):
    # 4 sunk steps per call do not divide the 3-step display interval: calls are cut to fit.
    started = time.time()
    code, config = train_tiny(tmp_path, max_train_steps=8, iterations_per_loop=4, display_every=3)
    assert code == 0
    records = read_metrics(str(tmp_path))
    assert [r["step"] for r in records] == [3, 6, 8]
    for record in records:
        # Integer steps per epoch: the demo's 1437 training images // 32 = 44.
        assert record["epoch"] == pytest.approx(record["step"] / 44)
        assert record["fps"] > 0 and record["total_loss"] > record["loss"] > 0
        assert 0 <= record["train_top1"] <= 1
        assert started <= record["time"] <= time.time()
    etas = [r["eta_seconds"] for r in records]
    assert etas[0] > 0 and etas[-1] == 0  # the last step: nothing left
    log_lines = (tmp_path / "train.log").read_text().splitlines()
    # The interval shorter than the loop is said once, before the first log line.
    assert log_lines[0].startswith("warning: --display_every 3 < --iterations_per_loop 4")
    log_lines = [line for line in log_lines if "  step:" in line]
    assert [parts(line) for line in log_lines] == [
        parts(
            format_train_line(
                r["step"],
                r["epoch"],
                r["fps"],
                outputs(r["loss"], r["total_loss"], r["lr"], r["train_top1"]),
                r["eta_seconds"],
            )
        )
        for r in records
    ]
    with open(tmp_path / "config.json") as f:
        written = json.load(f)
    run = written.pop("run")
    assert written == config.flat()
    counts = {"steps_per_epoch": 44, "global_batch": 32, "train_images": 1437, "replicas": 1}
    assert run == {"id": run["id"], **counts, "history": [{"step": 0, "global_batch": 32}]}
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
    every_15_steps = 15 / 44  # epochs between evaluations (44 steps per epoch)
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
