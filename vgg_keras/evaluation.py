"""Top-1/top-5 evaluation of one checkpoint or of all of them.

The eval graph and input pipeline are built once; each checkpoint is restored into the same
session, so ten checkpoints cost ten passes over the validation data, not ten graph builds.
Every validation image is counted exactly once (no dropped tail batch).
"""

from __future__ import annotations

import os

import numpy as np

from vgg_keras import checkpoints, compat
from vgg_keras.compat import tf, v1
from vgg_keras.config import Config
from vgg_keras.data import pipeline
from vgg_keras.errors import UsageError
from vgg_keras.model import build_vgg
from vgg_keras.reporting import EVAL_HEADER, format_eval_row


class Evaluator:
    """Evaluates checkpoints of the network described by ``config`` on its validation split."""

    def __init__(self, config: Config, steps_per_epoch: float | None = None):
        self.config = config
        self.split = pipeline.load_split(config.data_dir, "validation", config.tfds_data_dir)
        self.steps_per_epoch = steps_per_epoch or _steps_per_epoch(config)
        self.graph = tf.Graph()
        with self.graph.as_default():
            compat.set_precision_policy(config.precision)
            self.model = build_vgg(
                config.arch, config.class_num, config.image_size, config.width_multiplier, 0.0
            )
            dataset = pipeline.eval_dataset(
                self.split,
                config.eval_batch_size or config.batch_size,
                config.image_size,
                config.class_num,
                label_offset=config.label_offset,
                skip_corrupt=config.skip_corrupt,
            )
            iterator = v1.data.make_initializable_iterator(dataset)
            self._init = iterator.initializer
            images, labels = iterator.get_next()
            logits = tf.cast(self.model(images, training=False), tf.float32)
            k = min(5, config.class_num)
            _, top = tf.nn.top_k(logits, k)
            hits = tf.equal(top, tf.expand_dims(labels, 1))
            self._fetches = {
                "top1": tf.reduce_sum(tf.cast(hits[:, 0], tf.int64)),
                "top5": tf.reduce_sum(tf.cast(tf.reduce_any(hits, axis=1), tf.int64)),
                "loss": tf.reduce_sum(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
                ),
                "images": tf.size(labels, out_type=tf.int64),
            }
            self._saver = v1.train.Saver(self.model.weights)
        self.session = v1.Session(
            graph=self.graph,
            config=compat.session_config(
                config.intra_op_threads, config.inter_op_threads, config.xla
            ),
        )

    def evaluate(self, checkpoint: str) -> dict:
        """Metrics of one checkpoint over every validation image."""
        checkpoints.check_compatible(checkpoint, self.model.weights)
        with self.graph.as_default():  # the v1 Saver works only in graph mode
            self._saver.restore(self.session, checkpoint)
        self.session.run(self._init)
        totals = dict.fromkeys(self._fetches, 0.0)
        while True:
            try:
                batch = self.session.run(self._fetches)
            except tf.errors.OutOfRangeError:
                break
            for key, value in batch.items():
                totals[key] += value
        images = int(totals["images"])
        if images != self.split.num_examples and not self.config.skip_corrupt:
            raise UsageError(
                f"{self.config.data_dir}: evaluated {images} images, the split has "
                f"{self.split.num_examples}"
            )
        step = checkpoints.checkpoint_step(checkpoint)
        return {
            "checkpoint": checkpoint,
            "step": step,
            "epoch": round(step / self.steps_per_epoch, 3),
            "top1": totals["top1"] / max(images, 1),
            "top5": totals["top5"] / max(images, 1),
            "loss": totals["loss"] / max(images, 1),
            "images": images,
            "checkpoint_time": os.path.getmtime(checkpoint + ".index"),
        }

    def report(self, results: list[dict], reporter) -> None:
        """The evaluation table through ``reporter`` and the metrics in metrics.jsonl."""
        reporter.print(EVAL_HEADER)
        for result in results:
            reporter.print(format_eval_row(result))
            reporter.metrics(
                result["step"],
                epoch=result["epoch"],
                eval_top1=result["top1"],
                eval_top5=result["top5"],
                eval_loss=result["loss"],
            )

    def close(self) -> None:
        self.session.close()


def _steps_per_epoch(config: Config) -> float:
    try:
        train_images = pipeline.load_split(config.data_dir, "train", config.tfds_data_dir).num_examples
    except UsageError:
        return float("inf")  # no training split beside the validation data: epochs unknown
    return max(train_images / config.batch_size, 1e-9)


def evaluate_folder(config: Config) -> int:
    """--mode evaluate: every checkpoint in --eval_dir (default --log_dir), in step order."""
    from vgg_keras.reporting import Reporter

    folder = config.eval_dir or config.log_dir
    found = checkpoints.list_checkpoints(folder)
    if not found:
        raise UsageError(f"no model.ckpt-* checkpoints in {folder}")
    evaluator = Evaluator(config)
    reporter = Reporter(folder, "eval.log", progress=False, summary_subdir="eval")
    try:
        results = [evaluator.evaluate(path) for path in found]
        evaluator.report(results, reporter)
    finally:
        reporter.close()
        evaluator.close()
    return 0 if np.isfinite([r["loss"] for r in results]).all() else 1
