"""Top-1/top-5 evaluation of one checkpoint or of all of them (``run_eval.py``).

The eval graph and input pipeline are built once; each checkpoint is restored into the same
session, so ten checkpoints cost ten passes over the validation data, not ten graph builds.
Every validation image is counted exactly once (no dropped tail batch) and the count is checked
against the split size.  The network's settings come from the ``config.json`` training wrote
beside the checkpoints; ``--watch`` turns the evaluator into a side-car of a running training.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import io
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator

from tqdm import tqdm

from vgg_keras import atomic, checkpoints, cli, compat, distribute, rundir
from vgg_keras import config as config_lib
from vgg_keras import model as model_lib
from vgg_keras.compat import tf, v1
from vgg_keras.config import Config
from vgg_keras.data import pipeline
from vgg_keras.errors import EXIT_FAILED, EXIT_NONFINITE, EXIT_SIGINT, UsageError, reason
from vgg_keras.reporting import EVAL_HEADER, Reporter, format_eval_row

RESULTS_JSON = "eval_results.json"
RESULTS_CSV = "eval_results.csv"
CURVE_PNG = "eval_curve.png"
EVAL_LOG = "eval.log"
RESULT_KEYS = ("checkpoint", "step", "epoch", "top1", "top5", "loss", "images")
WATCH_POLL_SECONDS = 1.0


class CheckpointGone(UsageError):
    """The checkpoint's files disappeared before they were read (training's rotation)."""


class Stopped(Exception):
    """Evaluation given up at a batch boundary because the run was asked to stop."""


class Evaluator:
    """Evaluates checkpoints of the network described by ``config`` on its validation split.

    Loads the split, builds the graph and opens its session on construction; use it as a
    context manager (or call ``close``) so the session is closed however evaluation ends.
    ``crops=10`` averages the logits of ten crops per image; ``progress`` shows a tqdm bar per
    checkpoint when stderr is a terminal; ``log`` receives one line when the graph is built.
    ``steps_per_epoch`` turns steps into the epochs of the table (default: as training logged
    them, else the training split over --batch_size).
    """

    def __init__(
        self,
        config: Config,
        steps_per_epoch: float | None = None,
        *,
        crops: int = 1,
        progress: bool = False,
        log: Callable[[str], None] | None = None,
        dist: distribute.Distribution | None = None,
    ):
        started = time.perf_counter()
        # Under a strategy the replicas of all workers share the images and sum the counts.
        dist = (dist or distribute.single_device()).for_evaluation()
        self.config = config
        self.progress = progress
        self.split = pipeline.load_split(
            config.data_dir, "validation", config.tfds_data_dir, config.skip_corrupt
        )
        self.steps_per_epoch = steps_per_epoch or _steps_per_epoch(config)
        self._batch_size = config.eval_batch_size or config.batch_size
        self._batches = dist.eval_steps(self.split, self._batch_size)
        self.graph = tf.Graph()
        with self.graph.as_default(), dist.scope():
            self._build(dist, crops)
        self.graph.finalize()  # restoring and evaluating must never add ops
        self.session = dist.session(
            self.graph,
            compat.session_config(config.intra_op_threads, config.inter_op_threads, config.xla),
        )
        if log is not None:
            log(
                f"eval graph built in {time.perf_counter() - started:.1f} s: {config.arch}, "
                f"{config.class_num} classes, {config.image_size} px, width "
                f"{config.width_multiplier:g}, {crops} crop(s) after the {config.eval_resize} resize; "
                f"{self.split.num_examples} images "
                f"in {config.data_dir}"
            )

    def _build(self, dist: distribute.Distribution, crops: int) -> None:
        """The eval graph: iterator -> model -> per-replica sums -> sums over all replicas."""
        config = self.config
        with compat.precision_policy(config.precision):
            self.model = model_lib.from_config(config)

        def dataset_fn(num_workers: int, worker_index: int) -> tf.data.Dataset:
            dataset = pipeline.eval_dataset(
                self.split,
                self._batch_size,
                config.image_size,
                config.class_num,
                label_offset=config.label_offset,
                skip_corrupt=config.skip_corrupt,
                normalization=config.preprocess,
                crops=crops,
                resize=config.eval_resize,
                num_workers=num_workers,
                worker_index=worker_index,
            )
            # Each session call takes one batch per local replica.
            batches = self._batches * dist.local_replicas
            return distribute.pad_batches(dataset, self._batch_size, batches)

        def replica_sums(images, labels, real):
            """[top1, top5, loss, images] summed over this replica's real images."""
            size = config.image_size
            # Crops ride in the batch dimension: one forward pass, then the mean logit.
            logits = self.model(tf.reshape(images, [-1, size, size, 3]), training=False)
            logits = tf.reshape(tf.cast(logits, tf.float32), [-1, crops, config.class_num])
            logits = tf.reduce_mean(logits, axis=1)
            _, top = tf.nn.top_k(logits, min(5, config.class_num))
            hits = tf.equal(top, tf.expand_dims(labels, 1))
            # Plain cross-entropy: label smoothing is a training device, not a metric.
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
            per_image = [hits[:, 0], tf.reduce_any(hits, axis=1), loss, tf.ones_like(loss)]
            weight = tf.cast(real, tf.float32)
            return tf.stack([tf.reduce_sum(weight * tf.cast(v, tf.float32)) for v in per_image])

        self._init, next_batch = dist.input_iterator(dataset_fn)
        sums = dist.reduce(distribute.ReduceOp.SUM, dist.run(replica_sums, *next_batch()))
        self._fetches = dict(zip(("top1", "top5", "loss", "images"), tf.unstack(sums)))
        # Workers meet here before restoring: the chief has then finished writing.
        self._barrier = None
        if dist.num_workers > 1:
            self._barrier = dist.reduce(distribute.ReduceOp.SUM, dist.run(lambda: tf.constant(1.0)))
        self._saver = v1.train.Saver(self.model.weights)

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
            written = os.path.getmtime(checkpoint + ".index")
            checkpoints.check_compatible(checkpoint, self.model.weights)
            with self.graph.as_default():  # the v1 Saver works only in graph mode
                self._saver.restore(self.session, checkpoint)
        except (UsageError, OSError, ValueError, tf.errors.OpError) as err:
            if _gone(checkpoint):
                raise CheckpointGone(f"{checkpoint} was deleted before it was read") from err
            if isinstance(err, tf.errors.OpError):
                raise UsageError(f"{checkpoint}: cannot restore ({reason(err)})") from err
            raise
        step = checkpoints.checkpoint_step(checkpoint)
        self.session.run(self._init)
        totals = dict.fromkeys(self._fetches, 0)
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
                batch = self._run_batch()
                for key, value in batch.items():
                    totals[key] += value.item()
                bar.update()
        images = int(totals["images"])
        if images != self.split.num_examples and not self.config.skip_corrupt:
            raise UsageError(
                f"{self.config.data_dir}: evaluated {images} images, the split has "
                f"{self.split.num_examples}"
            )
        return {
            "checkpoint": checkpoint,
            "step": step,
            "epoch": round(step / self.steps_per_epoch, 3),
            "top1": totals["top1"] / max(images, 1),
            "top5": totals["top5"] / max(images, 1),
            "loss": totals["loss"] / max(images, 1),
            "images": images,
            "checkpoint_time": written,
        }

    def _run_batch(self) -> dict:
        try:
            return self.session.run(self._fetches)
        except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as err:
            from vgg_keras.data import diagnose

            split, config = self.split, self.config
            explained = diagnose.explain(
                err, list(split.files), config.class_num, config.label_offset, parse=split.parse
            )
            raise explained from err

    def report(self, results: list[dict], reporter, header: bool = True) -> None:
        """The evaluation table through ``reporter`` and the metrics in metrics.jsonl."""
        if header:
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

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _steps_per_epoch(config: Config) -> float:
    """Training steps per epoch when training's log does not say: one replica's batch."""
    try:
        split = pipeline.load_split(config.data_dir, "train", config.tfds_data_dir)
        train_images = split.num_examples
    except UsageError:
        return float("inf")  # no training split beside the validation data: epochs unknown
    return max(train_images / config.batch_size, 1e-9)


def _gone(checkpoint: str) -> bool:
    """True when the index or every data shard is missing (deleted, or being deleted)."""
    return not os.path.exists(checkpoint + ".index") or not glob.glob(checkpoint + ".data-*")


# ---------------------------------------------------------------------------------------------
# Many checkpoints: the table row by row, result files, the curve


def evaluate_checkpoints(
    evaluator: Evaluator, paths: Iterable[str], reporter: Reporter, output: str
) -> list[dict]:
    """Evaluate ``paths`` in order with one evaluator; the table is printed row by row and the
    result files rewritten after every checkpoint, so a watcher's files are always current."""
    results = []
    for path in paths:
        try:
            result = evaluator.evaluate(path)
        except CheckpointGone as gone:
            reporter.print(f"skipped: {gone}")
            continue
        evaluator.report([result], reporter, header=not results)
        results.append(result)
        write_results(results, output)
    return results


def write_results(results: list[dict], output: str) -> None:
    """eval_results.json and .csv in ``output``, and eval_curve.png when there are several."""
    rows = [{key: result[key] for key in RESULT_KEYS} for result in results]
    os.makedirs(output, exist_ok=True)
    atomic.write_text(os.path.join(output, RESULTS_JSON), json.dumps(rows, indent=1) + "\n")
    text = io.StringIO()
    writer = csv.DictWriter(text, RESULT_KEYS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(os.path.join(output, RESULTS_CSV), text.getvalue())
    if len(rows) > 1:
        plot_curve(rows, os.path.join(output, CURVE_PNG))


def plot_curve(results: list[dict], path: str) -> None:
    """Top-1 and top-5 against step, to pick the best checkpoint at a glance."""
    # The Agg canvas directly, not pyplot: no global backend state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=100, layout="tight")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    steps = [r["step"] for r in results]
    axes.plot(steps, [r["top1"] for r in results], "o-", label="top-1")
    axes.plot(steps, [r["top5"] for r in results], "s--", label="top-5")
    axes.set(xlabel="step", ylabel="accuracy", ylim=(0, 1.02))
    axes.set_title(os.path.dirname(results[0]["checkpoint"]) or ".", fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    with atomic.replacing(path) as tmp:
        figure.savefig(tmp, format="png")


def _exit_code(results: list[dict]) -> int:
    """0 when something was evaluated and every loss is finite; a NaN model is a failure."""
    if not results:
        return EXIT_FAILED  # every checkpoint was deleted before it could be read
    return 0 if all(math.isfinite(r["loss"]) for r in results) else EXIT_NONFINITE


def evaluate_folder(config: Config) -> int:
    """--mode evaluate: every checkpoint in --eval_dir (default --log_dir), in step order."""
    folder = config.eval_dir or config.log_dir
    found = checkpoints.list_checkpoints(folder)
    if not found:
        raise UsageError(f"no model.ckpt-* checkpoints in {folder}")
    return _exit_code(_evaluate_all(config, folder, found, folder))


def _evaluate_all(
    config: Config,
    folder: str,
    paths: Iterable[str],
    output: str,
    crops: int = 1,
    last_words: str | None = None,
) -> list[dict]:
    """The set-up both CLIs share: a reporter writing into ``output`` and one evaluator for
    every checkpoint of the run in ``folder``; both closed however evaluation ends.
    ``last_words`` is logged when every checkpoint is done."""
    with contextlib.ExitStack() as stack:
        try:
            reporter = Reporter(output, EVAL_LOG, progress=False, summary_subdir="eval")
        except (OSError, tf.errors.OpError) as err:
            why = err.strerror if isinstance(err, OSError) else reason(err)
            raise UsageError(
                f"cannot write {EVAL_LOG} and the results to {output} ({why}): "
                "name a writable folder with --output"
            ) from err
        stack.callback(reporter.close)
        evaluator = stack.enter_context(
            Evaluator(
                config,
                rundir.logged_steps_per_epoch(folder),
                crops=crops,
                progress=config.progress,
                log=reporter.print,
            )
        )
        try:
            results = evaluate_checkpoints(evaluator, paths, reporter, output)
        except KeyboardInterrupt:
            reporter.print(f"interrupted: the checkpoints evaluated so far are in {output}")
            raise
        if last_words:
            reporter.print(last_words)
        return results


# ---------------------------------------------------------------------------------------------
# Watching a training run


def watch_checkpoints(
    folder: str, timeout: float, after_step: int = -1, poll: float = WATCH_POLL_SECONDS
) -> Iterator[str]:
    """Each ``model.ckpt-N`` with N > ``after_step`` in ``folder``, in step order, as training
    writes them; ends once ``timeout`` seconds pass without a new one.

    The idle clock restarts after the caller has handled a checkpoint, so time spent
    evaluating does not count as waiting.
    """
    idle_since = time.monotonic()
    while True:
        fresh = [
            path
            for path in checkpoints.list_checkpoints(folder)
            if checkpoints.checkpoint_step(path) > after_step
        ]
        for path in fresh:
            yield path
            after_step = checkpoints.checkpoint_step(path)
        if fresh:
            idle_since = time.monotonic()
            continue
        waited = time.monotonic() - idle_since
        if waited >= timeout:
            return
        time.sleep(min(poll, timeout - waited))


# ---------------------------------------------------------------------------------------------
# Command line (run_eval.py)


def _targets(args: argparse.Namespace) -> tuple[str, Iterable[str]]:
    """(the checkpoint folder, the checkpoints to evaluate in order; lazy with --watch).

    ``--eval_dir DIR`` is every checkpoint in DIR (as in the reference and ``run_train.py --mode
    evaluate``); ``--ckpt DIR`` its newest one, every one with ``--all-ckpts``; neither is the
    default run, the newest run under ``runs/``.
    """
    if args.ckpt and args.eval_dir:
        raise UsageError("--ckpt and --eval_dir both name checkpoints: give one of them")
    every = args.all_ckpts or args.eval_dir is not None
    path = args.ckpt or args.eval_dir
    if not path:
        path = rundir.newest_run()
        print(
            f"evaluating {path}: the newest run under {rundir.RUNS_DIR}/ "
            "(name another with --eval_dir DIR)",
            flush=True,
        )
    path = os.path.normpath(path)
    is_prefix = not os.path.isdir(path) and os.path.exists(path + ".index")
    if is_prefix and (every or args.watch):
        flag = "--watch" if args.watch else "--all-ckpts" if args.all_ckpts else "--eval_dir"
        raise UsageError(f"{flag} needs a folder, {path} is one checkpoint")
    if args.watch:
        latest = checkpoints.latest_checkpoint(path)
        # Without --all-ckpts or --eval_dir the side-car starts from the newest checkpoint there.
        after = -1 if every or latest is None else checkpoints.checkpoint_step(latest) - 1
        return path, watch_checkpoints(path, args.watch_timeout, after)
    if is_prefix:
        return os.path.dirname(path), [path]
    if not os.path.isdir(path):
        raise UsageError(f"checkpoint not found: {path} (neither a folder nor {path}.index)")
    found = checkpoints.list_checkpoints(path)
    if not found:
        raise UsageError(f"no model.ckpt-* checkpoints in {path}")
    return path, found if every else found[-1:]


def resolve_config(args: argparse.Namespace, folder: str) -> Config:
    """The run's settings: config.json in ``folder`` (except how to run this process),
    overridden by flags given explicitly; the validation shards are always read."""
    saved = rundir.read_config(folder)
    if args.data_dir is None and saved.get("data_dir") is None:
        path = os.path.join(folder, rundir.CONFIG_FILE)
        source = f"{path} names none" if saved else f"no {rundir.CONFIG_FILE} in {folder}"
        raise UsageError(f"--data_dir is required ({source})")
    flags = {name: getattr(args, name) for name in cli.EVAL_FLAGS}
    return config_lib.merge(saved=saved, flags={**flags, "synthetic": False})


def run(args: argparse.Namespace) -> int:
    """run_eval.py with ``cli.eval_parser()``'s flags; returns the exit code (0 done, 1 nothing
    left to evaluate, 3 a non-finite loss, 130 interrupted)."""
    try:
        return _exit_code(evaluate_args(args))
    except KeyboardInterrupt:
        return EXIT_SIGINT


def evaluate_args(args: argparse.Namespace) -> list[dict]:
    """The results of run_eval.py's flags, one dict per checkpoint (``RESULT_KEYS`` and
    ``checkpoint_time``); also printed and written like run_eval.py's."""
    folder, paths = _targets(args)
    paths = iter(paths)
    first = next(paths, None)  # with --watch: waits for training's first checkpoint
    if first is None:
        raise UsageError(
            f"no model.ckpt-* checkpoint appeared in {folder} within {args.watch_timeout:g} s"
        )
    config = resolve_config(args, folder)
    watched = f"no new checkpoint for {args.watch_timeout:g} s: stopped watching"
    return _evaluate_all(
        config,
        folder,
        itertools.chain([first], paths),
        args.output or folder,
        args.eval_crops,
        last_words=watched if args.watch else None,
    )
