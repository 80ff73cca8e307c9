"""What a run tells its user: log lines, a progress bar (or plain progress lines), metrics.jsonl,
TensorBoard scalars.

The log line starts with the time and keeps the reference implementation's fields, so its
log parsers still work, then adds the batch's training top-1 and the time left:
``2026-12-01 21:05:09  step:   100  epoch:  2.3  FPS:  812.4  loss: 1.234  total_loss: 1.301
lr:0.01000  top1: 62.5%  eta 0:03:10``.  On a terminal a tqdm bar shows the steps; elsewhere
(``nohup``, a cluster's log file) a plain ``progress:`` line is printed every
``PROGRESS_SECONDS`` instead.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
import time

from tqdm import tqdm

from vgg_keras import rundir, storage
from vgg_keras.compat import tf

PROGRESS_SECONDS = 60.0  # between plain progress lines where stderr is not a terminal
# tf.summary.scalar lives in the tensorboard package, which TensorFlow no longer requires; the
# raw summary op plus the scalars plugin's metadata writes the same event.
_SCALAR_METADATA = tf.compat.v1.SummaryMetadata(
    plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars")
).SerializeToString()


def timestamp(when: float | None = None) -> str:
    return datetime.datetime.fromtimestamp(when or time.time()).strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float | None) -> str:
    """``1:02:03`` (``-`` when unknown)."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    return str(datetime.timedelta(seconds=int(round(seconds))))


def format_train_line(step, epoch, fps, out, eta_seconds=None) -> str:
    """The reference's fields (step, epoch, FPS, loss, total_loss, lr), then top-1 and ETA."""
    return (
        f"{timestamp()}  step:{step:6d}  epoch:{epoch:5.1f}  FPS:{fps:7.1f}  "
        f"loss:{out.loss:6.3f}  total_loss:{out.total_loss:6.3f}  lr:{out.lr:7.5f}  "
        f"top1:{100 * out.top1:5.1f}%  eta {duration(eta_seconds)}"
    )


def _json_number(value):
    """NaN/Inf are not JSON: write them as strings so metrics.jsonl stays parseable."""
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


def read_metrics(log_dir: str) -> list[dict]:
    """The records of ``<log_dir>/metrics.jsonl`` in file order (what ``Reporter.metrics`` wrote)."""
    with storage.open(os.path.join(log_dir, rundir.METRICS_FILE)) as f:
        return [json.loads(line) for line in f if line.strip()]


class Reporter:
    """Writes log lines (console + log file), metrics.jsonl (``metrics``) and TensorBoard
    scalars.  Only the chief worker writes files; every worker may show progress."""

    def __init__(
        self,
        log_dir: str,
        log_name: str,
        *,
        is_chief: bool = True,
        total_steps: int | None = None,
        initial_step: int = 0,
        progress: bool = True,
        summary_subdir: str = "",
        metrics: bool = True,
    ):
        self.is_chief = is_chief
        self._log = self._metrics = self._writer = self._bar = None
        if is_chief:
            storage.makedirs(log_dir)
            self._log = storage.open(os.path.join(log_dir, log_name), "a")
            if metrics:
                self._metrics = storage.open(os.path.join(log_dir, rundir.METRICS_FILE), "a")
            self._writer = tf.summary.create_file_writer(os.path.join(log_dir, summary_subdir))
        self._total = total_steps if progress and is_chief else None  # the chief's progress
        self._last_progress = time.monotonic()
        if self._total and sys.stderr.isatty():
            self._bar = tqdm(
                total=total_steps,
                initial=initial_step,
                unit="step",
                dynamic_ncols=True,
                file=sys.stderr,
                leave=False,
            )

    def print(self, text: str) -> None:
        """A line on the console (above the bar) and in the log file."""
        if self._bar is not None:
            self._bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)
        if self._log:
            self._log.write(text + "\n")
            self._log.flush()

    def advance(self, step: int, eta_seconds: float | None = None) -> None:
        """The bar at ``step``; without a terminal, a plain line every PROGRESS_SECONDS."""
        if self._bar is not None:
            self._bar.n = step
            self._bar.refresh()
        elif self._total and time.monotonic() - self._last_progress >= PROGRESS_SECONDS:
            self._last_progress = time.monotonic()
            done = 100 * step / self._total
            line = f"progress: step {step}/{self._total} ({done:.1f}%), eta {duration(eta_seconds)}"
            print(f"{timestamp()}  {line}", file=sys.stderr, flush=True)

    def train_step(self, step: int, epoch: float, out, fps: float, eta_seconds=None, **extra):
        """The log line and the metrics of a training step's StepOutputs ``out`` (the chief's
        only: the workers' steps are the same, one line each would say it N times)."""
        if not self.is_chief:
            return
        self.print(format_train_line(step, epoch, fps, out, eta_seconds))
        self.metrics(
            step,
            epoch=epoch,
            fps=fps,
            loss=out.loss,
            total_loss=out.total_loss,
            lr=out.lr,
            train_top1=out.top1,
            grad_norm=out.grad_norm,
            eta_seconds=eta_seconds,
            time=time.time(),
            **extra,
        )

    def metrics(self, step: int, **values) -> None:
        """One JSON line in metrics.jsonl (with ``metrics``) and the same scalars in
        TensorBoard."""
        if not self.is_chief:
            return
        values = {k: _plain(v) for k, v in values.items() if v is not None}
        if self._metrics is not None:
            record = {"step": int(step), **{k: _json_number(v) for k, v in values.items()}}
            self._metrics.write(json.dumps(record) + "\n")
            self._metrics.flush()
        # Eager summary ops on the host keep the training graph free of summary ops.  init_scope
        # only lifts them out of a tf.function; inside `with graph.as_default()` the eager
        # writer cannot be used, so callers report outside their graph blocks.
        # (The step is given per write: TF 1.15's writer.as_default takes no step.)
        with tf.init_scope(), self._writer.as_default():
            for key, value in values.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "time"):
                    tf.summary.write(key, float(value), int(step), metadata=_SCALAR_METADATA)
        self._writer.flush()

    def close(self) -> None:
        for handle in (self._bar, self._log, self._metrics, self._writer):
            if handle is not None:
                handle.close()
        self._bar = self._log = self._metrics = self._writer = None


def _plain(value):
    """numpy scalars -> Python numbers."""
    return value.item() if hasattr(value, "item") else value
