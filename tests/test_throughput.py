"""Training FPS: only the timed training calls count, warm-up calls are left out, the summary
skips the first interval."""

from __future__ import annotations

import time

import pytest

from vgg_keras.throughput import Throughput


def _call(speed: Throughput, kind, steps: int, seconds: float) -> None:
    speed.timed(kind, lambda: time.sleep(seconds), steps)


def test_an_interval_counts_its_timed_calls_and_nothing_between_them():
    speed = Throughput(global_batch=8)
    _call(speed, "loop", 10, 0.05)  # warm-up: left out
    _call(speed, "loop", 10, 0.02)
    time.sleep(0.2)  # an evaluation or a checkpoint between calls: not counted
    _call(speed, "loop", 10, 0.02)
    first = speed.interval()
    assert first["interval_steps"] == 20
    assert 0.04 <= first["interval_seconds"] < 0.15
    assert first["fps"] == pytest.approx(20 * 8 / first["interval_seconds"])
    _call(speed, "single", 1, 0.05)  # another kind's first call: its own warm-up
    _call(speed, "loop", 10, 0.02)
    second = speed.interval()
    assert second["interval_steps"] == 10
    assert speed.summary().startswith(
        f"training FPS: {second['fps']:.1f} images/s (mean over 80 images in 10 steps"
    )


def test_an_interval_of_warm_up_calls_only_reports_them():
    speed = Throughput(global_batch=4)
    assert speed.summary() is None
    _call(speed, "loop", 5, 0.01)
    only = speed.interval()
    assert only["interval_steps"] == 5 and only["fps"] > 0
    assert speed.summary() is None  # the first interval is never in the mean
