"""Training speed (FPS, images per second) counted over training alone, as the reference's
figure is: evaluations, checkpoint saves and log writing happen between the timed calls.

Each log interval's FPS is ``interval_steps * global_batch / interval_seconds``, where the
seconds are those of the training session calls of exactly those steps.  The first session
call of each kind (a single step, or N sunk steps) also builds and optimises its part of the
graph; its steps and time are left out of the figure altogether, unless the interval has
nothing else (a first log line that comes after a single call), which then counts it.
"""

from __future__ import annotations

import time


class Throughput:
    """Times training session calls and turns them into per-interval and whole-run FPS."""

    def __init__(self, global_batch: int, max_steps: int | None = None, start_step: int = 0):
        self.global_batch = global_batch
        self._left = None if max_steps is None else max_steps - start_step
        self._wall_start = time.monotonic()
        self._done = 0  # steps of every call, warm-ups included (for the ETA)
        self._warm = set()  # kinds of call whose first (warm-up) call is behind us
        self._timed = [0, 0.0]  # this interval's steps and seconds, warm-up calls left out
        self._warmup = [0, 0.0]  # and those of its warm-up calls
        self._intervals = 0
        self._run = [0, 0.0]  # totals over the intervals after the first one

    def timed(self, kind, fn, steps: int):
        """``fn()``, counting its time and ``steps`` unless it is the first call of ``kind``
        (any hashable: one per executor a call's feeds make)."""
        started = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - started
        self._done += steps
        counts = self._timed if kind in self._warm else self._warmup
        self._warm.add(kind)
        counts[0] += steps
        counts[1] += seconds
        return result

    def eta_seconds(self) -> float | None:
        """Wall-clock seconds to the run's end at the pace so far (evaluations and saves
        included); None before the first step or without an end."""
        if self._left is None or not self._done:
            return None
        elapsed = time.monotonic() - self._wall_start
        return max(0, self._left - self._done) * elapsed / self._done

    def interval(self) -> dict:
        """{fps, interval_steps, interval_seconds} since the previous call; starts a new one."""
        # Only warm-up calls: better their figure than none.
        steps, seconds = self._timed if self._timed[0] else self._warmup
        if self._intervals:  # the first interval is the run's ramp-up (caches, the pipeline)
            self._run = [self._run[0] + steps, self._run[1] + seconds]
        self._intervals += 1
        self._timed, self._warmup = [0, 0.0], [0, 0.0]
        return {
            "fps": self._fps(steps, seconds),
            "interval_steps": steps,
            "interval_seconds": seconds,
        }

    def summary(self) -> str | None:
        """The end-of-run line: mean training FPS over every interval but the first."""
        steps, seconds = self._run
        if not seconds:
            return None
        return (
            f"training FPS: {self._fps(steps, seconds):.1f} images/s (mean over "
            f"{steps * self.global_batch} images in {steps} steps, {seconds:.1f} s "
            "of training; first log interval, evaluation and checkpoints not counted)"
        )

    def _fps(self, steps: int, seconds: float) -> float:
        return steps * self.global_batch / seconds if seconds > 0 else 0.0
