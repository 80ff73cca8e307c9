"""Top-1/top-5 evaluation of one checkpoint or of all of them (``run_eval.py``).

The eval graph and input pipeline are built once; each checkpoint is restored into the same
session, so ten checkpoints cost ten passes over the validation data, not ten graph builds.
Every validation image is counted exactly once (no dropped tail batch) and the count is checked
against the split size.  The network's settings come from the ``config.json`` training wrote
beside the checkpoints; ``--watch`` turns the evaluator into a side-car of a running training.

Results never overwrite each other: the run's own protocol (its data, one central crop, its
resize) is ``eval_results.json``; other settings write ``eval_results.<tag>.json`` (the tag
names what differs, e.g. ``crops10``, ``resize-square``); rows of a file are merged by
checkpoint.  Only training's own evaluations go into its metrics.jsonl.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from vgg_keras import checkpoints, cli, compat, distribute, results, rundir, storage
from vgg_keras import config as config_lib
from vgg_keras import model as model_lib
from vgg_keras.compat import tf
from vgg_keras.config import Config
from vgg_keras.data import pipeline
from vgg_keras.errors import EXIT_FAILED, EXIT_NONFINITE, UsageError, on_interrupt, reason
from vgg_keras.reporting import Reporter
from vgg_keras.tools import diagnose

WATCH_POLL_SECONDS = 1.0


class CheckpointGone(UsageError):
    """The checkpoint's files disappeared before they were read (training's rotation)."""


class Stopped(Exception):
    """Evaluation given up at a batch boundary because the run was asked to stop."""


class Evaluator(contextlib.AbstractContextManager):
    """Evaluates checkpoints of the network described by ``config`` on its validation split.

    Loads the split, builds the graph and opens its session on construction; use it as a
    context manager (or call ``close``) so the session is closed however evaluation ends.
    ``precision`` is the run's resolved precision (``Distribution.precision``); ``crops=10``
    averages the logits of ten crops per image; ``per_class`` also sums the confusion matrix;
    ``progress`` shows a tqdm bar per checkpoint on a terminal; ``log`` receives one line when
    the graph is built.  ``steps_per_epoch`` turns steps into the epochs of the table.
    """

    def __init__(
        self,
        config: Config,
        steps_per_epoch: int | None,
        *,
        precision: str,
        dist: distribute.Distribution | None = None,
        crops: int = 1,
        per_class: bool = False,
        progress: bool = False,
        log: Callable[[str], None] | None = None,
    ):
        started = time.perf_counter()
        # Under a strategy the replicas of all workers share the images and sum the counts.
        dist = (dist or distribute.single_device()).for_evaluation()
        self.config = config
        self.crops = crops
        self.progress = progress
        self.split = pipeline.load_split(config.input, "validation")
        self.steps_per_epoch = steps_per_epoch
        # No padded batch larger than the split: a huge --eval_batch_size costs nothing.
        wanted = config.input.eval_batch_size or config.input.batch_size
        self._batch_size = max(1, min(wanted, self.split.num_examples))
        self._batches = dist.eval_steps(self.split, self._batch_size)
        self.graph = tf.Graph()
        with self.graph.as_default(), dist.scope():
            self._build(dist, crops, per_class, precision)
        self.graph.finalize()  # restoring and evaluating must never add ops
        self.session = dist.session(self.graph, config.runtime)
        if log is not None:
            n = config.network
            log(
                f"eval graph built in {time.perf_counter() - started:.1f} s: {n.arch}, "
                f"{n.class_num} classes, {n.image_size} px, width {n.width_multiplier:g}, "
                f"{crops} crop(s) after the {config.input.resize} resize ({config.input.input_mode} "
                f"input); {self.split.num_examples} images in {config.input.data_dir}"
            )

    def _build(self, dist: distribute.Distribution, crops: int, per_class: bool, precision):
        """The eval graph: iterator -> model -> per-replica sums -> sums over all replicas."""
        network, inp = self.config.network, self.config.input
        with compat.precision_policy(precision):
            self.model = model_lib.build(network)
        classes = network.class_num

        def dataset_fn(num_workers: int, worker_index: int) -> tf.data.Dataset:
            dataset = pipeline.eval_dataset(
                self.split,
                network,
                inp,
                self._batch_size,
                crops=crops,
                num_workers=num_workers,
                worker_index=worker_index,
            )
            # Each session call takes one batch per local replica.
            batches = self._batches * dist.local_replicas
            return distribute.pad_batches(dataset, self._batch_size, batches)

        def replica_sums(images, labels, real):
            """[top1, top5, loss, images] summed over this replica's real images (and the
            confusion matrix, rows: labels, columns: predictions)."""
            size = network.image_size
            # Crops ride in the batch dimension: one forward pass, then the mean logit.
            logits = self.model(tf.reshape(images, [-1, size, size, 3]), training=False)
            logits = tf.reshape(tf.cast(logits, tf.float32), [-1, crops, classes])
            logits = tf.reduce_mean(logits, axis=1)
            _, top = tf.nn.top_k(logits, min(5, classes))
            hits = tf.equal(top, tf.expand_dims(labels, 1))
            # Plain cross-entropy: label smoothing is a training device, not a metric.
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
            per_image = [hits[:, 0], tf.reduce_any(hits, axis=1), loss, tf.ones_like(loss)]
            weight = tf.cast(real, tf.float32)
            sums = tf.stack([tf.reduce_sum(weight * tf.cast(v, tf.float32)) for v in per_image])
            if not per_class:
                return sums, tf.zeros([0, 0])
            truth = tf.one_hot(labels, classes) * weight[:, None]
            return sums, tf.matmul(truth, tf.one_hot(top[:, 0], classes), transpose_a=True)

        self._init, next_batch = dist.input_iterator(dataset_fn)
        sums, confusion = dist.run(replica_sums, *next_batch())
        sums = dist.reduce(distribute.ReduceOp.SUM, sums)
        self._fetches = dict(zip(results.SUMS, tf.unstack(sums)))
        if per_class:
            self._fetches["confusion"] = dist.reduce(distribute.ReduceOp.SUM, confusion)
        # Workers meet here before restoring: the chief has then finished writing.
        self._barrier = None
        if dist.num_workers > 1:
            self._barrier = dist.reduce(distribute.ReduceOp.SUM, dist.run(lambda: tf.constant(1.0)))

    def evaluate(self, checkpoint: str, stop: Callable[[], bool] | None = None) -> dict:
        """Metrics of one checkpoint over every validation image.

        Raises CheckpointGone when the files vanish before they are read; once restored into
        the session they are no longer needed, so a later deletion does no harm.  Raises
        Stopped before a batch when ``stop()`` is true (a signal: do not make it wait for the
        whole pass).
        """
        if self._barrier is not None:
            self.session.run(self._barrier)
        try:
            written = storage.getmtime(checkpoint + ".index")
            checkpoints.restore(self.session, checkpoint, self.model)
        except (UsageError, OSError, ValueError, tf.errors.OpError) as err:
            if _gone(checkpoint):
                raise CheckpointGone(f"{checkpoint} was deleted before it was read") from err
            if isinstance(err, tf.errors.OpError):
                raise UsageError(f"{checkpoint}: cannot restore ({reason(err)})") from err
            raise
        step = rundir.checkpoint_step(checkpoint)
        self.session.run(self._init)
        totals = self._run_all(step, stop, checkpoint)
        images, expected = int(totals["images"]), self.split.num_examples
        data, skip = self.config.input.data_dir, self.config.input.skip_corrupt
        if not images:  # never a 0% result: there is nothing it would be the accuracy of
            why = " (--skip_corrupt skipped them all)" if skip else ""
            raise UsageError(
                f"{data}: none of the {expected} validation records could be evaluated{why}"
            )
        if images != expected and not skip:
            raise UsageError(f"{data}: evaluated {images} images, the split has {expected}")
        result = results.row(checkpoint, step, self.steps_per_epoch, totals, written)
        if "confusion" in totals:
            result["confusion"] = totals["confusion"].astype(np.int64)
        return result

    def _run_all(self, step: int, stop, checkpoint: str) -> dict:
        totals = {}
        with tqdm(
            total=self._batches,
            desc=f"step {step}",
            unit="batch",
            leave=False,
            dynamic_ncols=True,
            disable=None if self.progress else True,  # None: only on a terminal
        ) as bar:
            for _ in range(self._batches):
                if stop is not None and stop():
                    raise Stopped(checkpoint)
                try:
                    sums = self.session.run(self._fetches)
                except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as err:
                    c = self.config
                    raise diagnose.explain(
                        err, self.split, c.network.class_num, c.input.label_offset
                    ) from err
                for key, value in sums.items():
                    totals[key] = totals.get(key, 0) + (
                        value if key == "confusion" else value.item()
                    )
                bar.update()
        return totals

    def report(self, rows: list[dict], reporter: Reporter, header: bool = True) -> None:
        """The evaluation table through ``reporter`` (percent), and the metrics (fractions) in
        its metrics.jsonl (training's reporter) and TensorBoard: the chief's (every worker
        evaluates the same checkpoint together, one table says it)."""
        if not reporter.is_chief:
            return
        if header:
            reporter.print(results.HEADER)
        for row in rows:
            reporter.print(results.format_row(row))
            scores = {"eval_" + k: row[k] for k in ("top1", "top5", "loss")}
            reporter.metrics(row["step"], epoch=row["epoch"], **scores)

    def close(self) -> None:
        self.session.close()

    def __exit__(self, *exc) -> None:
        self.close()


def _gone(checkpoint: str) -> bool:
    """True when the index or every data shard is missing (deleted, or being deleted)."""
    return not storage.exists(checkpoint + ".index") or not storage.glob(checkpoint + ".data-*")


# ---------------------------------------------------------------------------------------------
# Watching a training run


def watch_checkpoints(folder: str, timeout: float, after_step: int = -1) -> Iterator[str]:
    """Each ``model.ckpt-N`` with N > ``after_step`` in ``folder``, in step order, as training
    writes them; ends once ``timeout`` seconds pass without a new one.

    The idle clock restarts after the caller has handled a checkpoint, so time spent
    evaluating does not count as waiting.
    """
    idle_since = time.monotonic()
    while True:
        found = rundir.list_checkpoints(folder)
        fresh = [path for path in found if rundir.checkpoint_step(path) > after_step]
        for path in fresh:
            yield path
            after_step = rundir.checkpoint_step(path)
        if fresh:
            idle_since = time.monotonic()
            continue
        waited = time.monotonic() - idle_since
        if waited >= timeout:
            return
        time.sleep(min(WATCH_POLL_SECONDS, timeout - waited))


# ---------------------------------------------------------------------------------------------
# What run_eval.py (and run_train.py --mode evaluate, and the API's evaluate) does


def targets(options: cli.EvalOptions) -> tuple[str, Iterable[str]]:
    """(the checkpoint folder, the checkpoints to evaluate in order; lazy with --watch).

    ``--eval_dir DIR`` is every checkpoint in DIR (as in the reference and ``run_train.py --mode
    evaluate``); ``--ckpt DIR`` its newest one, every one with ``--all-ckpts``, the best with
    ``--best``; neither is the newest run under ``runs/``.
    """
    if options.ckpt and options.eval_dir:
        raise UsageError("--ckpt and --eval_dir both name checkpoints: give one of them")
    every = options.all_ckpts or options.eval_dir is not None
    if options.best and (every or options.watch):
        raise UsageError("--best names one checkpoint: not with --all-ckpts, --eval_dir or --watch")
    path = options.ckpt or options.eval_dir
    if not path:
        path = rundir.newest_run()
        print(
            f"evaluating {path}: the newest run under {rundir.RUNS_DIR}/ (name another with --eval_dir DIR)",
            flush=True,
        )
    path = storage.normpath(path)
    if options.watch:
        if not storage.isdir(path):
            raise UsageError(f"--watch needs a folder, {path} is none (check the name)")
        latest = rundir.latest_checkpoint(path)
        # Without --all-ckpts or --eval_dir the side-car starts from the newest checkpoint there.
        after = -1 if every or latest is None else rundir.checkpoint_step(latest) - 1
        print(
            f"watching {path} for checkpoints (up to {options.watch_timeout:g} s between them)",
            flush=True,
        )
        return path, watch_checkpoints(path, options.watch_timeout, after)
    if options.best:
        return path, [rundir.best_checkpoint(path)]
    found = rundir.resolve_checkpoint(path, every)
    return os.path.dirname(found[0]), found


def resolve_config(settings: dict, folder: str, checkpoint: str) -> Config:
    """The run's settings: config.json in ``folder`` (except how to run this process; without
    one, the network ``checkpoint``'s variables describe), overridden by the settings given;
    the validation shards are always read."""
    saved = rundir.read_config(folder)
    if settings.get("data_dir") is None and saved.get("data_dir") is None:
        path = os.path.join(folder, rundir.CONFIG_FILE)
        source = f"{path} names none" if saved else f"no {rundir.CONFIG_FILE} in {folder}"
        raise UsageError(f"--data_dir is required ({source})")
    saved = saved or checkpoints.read_contents(checkpoint).settings()
    return config_lib.resolve(
        settings={**settings, "synthetic": False},
        saved=saved,
        saved_source=os.path.join(folder, rundir.CONFIG_FILE),
        dataset_classes=pipeline.needed_classes,
    )


def run(options: cli.EvalOptions, settings: dict) -> list[dict]:
    """Evaluate what ``options`` name with ``settings`` (run_eval.py's flags given, None for
    not given); print the table, write the results; returns one dict per checkpoint."""
    folder, paths = targets(options)
    paths = iter(paths)
    first = next(paths, None)  # with --watch: waits for training's first checkpoint
    if first is None:
        raise UsageError(
            f"no model.ckpt-* checkpoint appeared in {folder} within {options.watch_timeout:g} s"
        )
    config = resolve_config(settings, folder, first)
    output = options.output or folder
    tag = results.tag(config, options.eval_crops, rundir.read_config(folder))
    with contextlib.ExitStack() as stack:
        reporter = _reporter(output, tag)
        stack.callback(reporter.close)
        evaluator = stack.enter_context(
            Evaluator(
                config,
                rundir.read_recorded(folder).get("steps_per_epoch"),
                precision=distribute.single_device().precision(config.network.precision),
                crops=options.eval_crops,
                per_class=options.per_class,
                progress=config.runtime.progress,
                log=reporter.print,
            )
        )
        with on_interrupt(f"interrupted: the checkpoints evaluated so far are in {output}"):
            rows = _evaluate_each(evaluator, itertools.chain([first], paths), reporter, output, tag)
        if options.watch:
            reporter.print(f"no new checkpoint for {options.watch_timeout:g} s: stopped watching")
        return rows


def _reporter(output: str, tag: str) -> Reporter:
    try:
        events = os.path.join(rundir.EVAL_EVENTS, tag) if tag else rundir.EVAL_EVENTS
        return Reporter(
            output, rundir.EVAL_LOG, metrics=False, progress=False, summary_subdir=events
        )
    except (OSError, tf.errors.OpError) as err:
        raise UsageError(
            f"cannot write {rundir.EVAL_LOG} and the results to {output} ({reason(err)}): "
            "name a writable folder with --output"
        ) from err


def _evaluate_each(
    evaluator: Evaluator, paths, reporter: Reporter, output: str, tag: str
) -> list[dict]:
    """Evaluate ``paths`` in order; the table is printed row by row and the result files
    rewritten after every checkpoint, so a watcher's files are always current."""
    rows = []
    for path in paths:
        try:
            row = evaluator.evaluate(path)
        except CheckpointGone as gone:
            reporter.print(f"skipped: {gone}")
            continue
        evaluator.report([row], reporter, header=not rows)
        rows.append(row)
        for line in results.write(rows, evaluator.config, output, tag, evaluator.crops):
            reporter.print(line)
    return rows


def exit_code(rows: list[dict]) -> int:
    """0 when something was evaluated and every loss is finite; a NaN model is a failure."""
    if not rows:
        return EXIT_FAILED  # every checkpoint was deleted before it could be read
    return 0 if all(np.isfinite(r["loss"]) for r in rows) else EXIT_NONFINITE
