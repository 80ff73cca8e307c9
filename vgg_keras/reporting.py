"""What a run tells its user: log lines, a tqdm bar, metrics.jsonl, TensorBoard scalars.

The log line keeps the reference implementation's format so existing log parsers still work:
``step:%6i  epoch:%5.1f  FPS:%7.1f  loss:%6.3f  total_loss:%6.3f  lr:%7.5f``.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys

from tqdm import tqdm

from vgg_keras.compat import tf

METRICS_FILE = "metrics.jsonl"
# tf.summary.scalar lives in the tensorboard package, which TensorFlow no longer requires; the
# raw summary op plus the scalars plugin's metadata writes the same event.
_SCALAR_METADATA = tf.compat.v1.SummaryMetadata(
    plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars")
).SerializeToString()
EVAL_HEADER = (
    f"{'step':>8}  {'epoch':>6}  {'top1':>7}  {'top5':>7}  {'loss':>7}  checkpoint_time(UTC)"
)


def format_train_line(step, epoch, fps, loss, total_loss, lr) -> str:
    return (
        f"step:{step:6d}  epoch:{epoch:5.1f}  FPS:{fps:7.1f}  loss:{loss:6.3f}  "
        f"total_loss:{total_loss:6.3f}  lr:{lr:7.5f}"
    )


def format_eval_row(result: dict) -> str:
    """One row of the evaluation table from an evaluation result dict."""
    when = result.get("checkpoint_time")
    stamp = (
        datetime.datetime.fromtimestamp(when, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        if when
        else "-"
    )
    return (
        f"{result['step']:8d}  {result['epoch']:6.1f}  {result['top1']:7.4f}  "
        f"{result['top5']:7.4f}  {result['loss']:7.4f}  {stamp}"
    )


def _json_number(value):
    """NaN/Inf are not JSON: write them as strings so metrics.jsonl stays parseable."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_metrics(log_dir: str) -> list[dict]:
    """The records of ``<log_dir>/metrics.jsonl`` in file order (what ``Reporter.metrics`` wrote)."""
    with open(os.path.join(log_dir, METRICS_FILE)) as f:
        return [json.loads(line) for line in f if line.strip()]


class Reporter:
    """Writes log lines (console + log file), metrics.jsonl and TensorBoard scalars.

    Only the chief worker writes files; every worker may show a progress bar.
    """

    def __init__(
        self,
        log_dir: str,
        log_name: str = "train.log",
        *,
        is_chief: bool = True,
        total_steps: int | None = None,
        initial_step: int = 0,
        progress: bool = True,
        summary_subdir: str = "",
    ):
        self.is_chief = is_chief
        self._log = self._metrics = self._writer = None
        if is_chief:
            os.makedirs(log_dir, exist_ok=True)
            self._log = open(os.path.join(log_dir, log_name), "a")
            self._metrics = open(os.path.join(log_dir, METRICS_FILE), "a")
            self._writer = tf.summary.create_file_writer(os.path.join(log_dir, summary_subdir))
        self._bar = None
        if progress and total_steps and sys.stderr.isatty():
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

    def advance(self, step: int) -> None:
        if self._bar is not None:
            self._bar.n = step
            self._bar.refresh()

    def train_step(self, step: int, epoch: float, fps: float, loss, total_loss, lr, **extra):
        self.print(format_train_line(step, epoch, fps, loss, total_loss, lr))
        self.metrics(
            step,
            epoch=epoch,
            fps=fps,
            loss=loss,
            total_loss=total_loss,
            lr=lr,
            **extra,
        )

    def metrics(self, step: int, **values) -> None:
        """One JSON line in metrics.jsonl and the same scalars in TensorBoard."""
        if not self.is_chief:
            return
        record = {"step": int(step), **{k: _json_number(_plain(v)) for k, v in values.items()}}
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        # Eager summary ops on the host keep the training graph free of summary ops.  init_scope
        # only lifts them out of a tf.function; inside `with graph.as_default()` the eager
        # writer cannot be used, so callers report outside their graph blocks.
        # (The step is given per write: TF 1.15's writer.as_default takes no step.)
        with tf.init_scope(), self._writer.as_default():
            for key, value in values.items():
                value = _plain(value)
                if isinstance(value, (int, float)) and key != "epoch":
                    tf.summary.write(key, float(value), int(step), metadata=_SCALAR_METADATA)
        self._writer.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        for handle in (self._log, self._metrics):
            if handle:
                handle.close()
        if self._writer:
            self._writer.close()
        self._log = self._metrics = self._writer = None


def _plain(value):
    """numpy scalars -> Python numbers."""
    return value.item() if hasattr(value, "item") else value
