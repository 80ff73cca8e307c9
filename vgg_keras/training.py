"""Training: setting a run up, and the explicit ``tf.compat.v1.Session`` loop.

Read top to bottom: ``train`` sets the run up (its folder, the graph, the session, the
evaluator, all owned by one ExitStack); ``_initialise`` gives it its first weights (a resumed
checkpoint of either layout, --restore_path, --weights, or fresh ones); ``_Loop`` runs the
graph, logging, checkpointing and evaluating on the way as the clock says.  A run whose log
folder holds a checkpoint resumes from it: weights, momentum, global_step and the position in the
input stream.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal

import numpy as np

from vgg_keras import (
    checkpoints,
    clock,
    compat,
    distribute,
    evaluation,
    op_parallelism,
    rundir,
    train_graph,
)
from vgg_keras.compat import tf
from vgg_keras.config import Config
from vgg_keras.data import pipeline
from vgg_keras.errors import EXIT_NONFINITE, RunError, UsageError, reason
from vgg_keras.plateau import ChancePlateau
from vgg_keras.reporting import Reporter, read_metrics
from vgg_keras.schedules import unreached
from vgg_keras.signals import StopSignals, exit_code
from vgg_keras.throughput import Throughput
from vgg_keras.tools import diagnose
from vgg_keras.train_graph import StepOutputs, TrainGraph


def train(config: Config) -> int:
    """Train (``--mode train`` or ``train_and_evaluate``); returns the process exit code."""
    dist = distribute.create(config)  # first: it may configure devices and start a server
    no_data = config.input.synthetic and config.input.data_dir is None  # no training split
    split = None if no_data else pipeline.load_split(config.input, "train")
    precision = dist.precision(config.network.precision)  # every graph of the run
    plan = clock.plan(config, split.num_examples if split else None, dist.num_replicas, precision)
    dist.check_plan(plan)
    if split is not None and not config.input.synthetic:  # refused before anything is written
        pipeline.check_one_batch(split, plan.replica_batch, dist.num_workers, dist.worker_index)
    with contextlib.ExitStack() as stack:
        counts = {**plan.recorded(), "replicas": dist.num_replicas}
        start = rundir.prepare(config, counts, stack, chief=dist.is_chief)  # how the run starts
        weights = _initial_weights(config, start)  # before anything is written: may fail
        if dist.is_chief and start.checkpoint is None:  # else once the checkpoint is restored
            rundir.write_config(config.loop.log_dir, config.flat(), start.record)
        start_step = rundir.checkpoint_step(start.checkpoint) if start.checkpoint else 0
        dataset_fn = _dataset_fn(config, plan, split, start.stream_step, dist)
        built = train_graph.build(config, dataset_fn, plan, dist)
        evaluator = None
        if plan.every["evaluate"]:
            evaluator = stack.enter_context(
                evaluation.Evaluator(
                    config, plan.steps_per_epoch, dist=dist, precision=plan.precision
                )
            )
        per_image = op_parallelism.training_flops_per_image(built.model)
        step_flops = per_image * config.input.batch_size
        session = dist.session(built.graph, config.runtime, step_flops)
        stack.enter_context(contextlib.closing(session))
        reporter = Reporter(
            config.loop.log_dir,
            config.loop.log_name,
            is_chief=dist.is_chief,
            total_steps=plan.max_steps,
            initial_step=start_step,
            progress=config.runtime.progress,
        )
        stack.callback(reporter.close)
        try:
            # From the first line on, a signal is answered (a restore can take a while).
            with StopSignals() as signals:
                signals.until = None if dist.num_workers > 1 else start_step
                for line in _start_notes(config, dist, plan, step_flops):
                    reporter.print(line)
                _initialise(config, dist, built, session, reporter, start, weights, plan)
                if split is not None and dist.num_workers > 1:
                    reporter.print(_describe_shard(split, dist.num_workers, dist.worker_index))
                code = _Loop(config, plan, built, session, reporter, evaluator, split).run(signals)
            if code == 0 and dist.num_workers > 1:
                # Equal on every worker when they stayed in sync (bit-identical weights).
                weights = session.run(built.model.weights)
                reporter.print(f"weights fingerprint {_fingerprint(weights)}")
            return code
        except (tf.errors.UnavailableError, tf.errors.CancelledError) as err:
            if dist.num_workers == 1:
                raise
            reporter.print(
                f"error: lost contact with another worker ({type(err).__name__}: it stopped, or "
                "its host is unreachable); restart every worker to resume from the newest "
                "checkpoint"
            )
            return 1


def _dataset_fn(config: Config, plan, split, start_step: int, dist: distribute.Distribution):
    """``dataset_fn(num_workers, worker_index)`` for the training graph: this worker's stream
    of one replica's optimizer steps (its micro-batches one after another), from
    ``start_step`` on."""

    def dataset_fn(num_workers: int, worker_index: int):
        if config.input.synthetic:
            return pipeline.synthetic_dataset(config.network, plan.replica_batch, config.loop.seed)
        return pipeline.train_dataset(
            split,
            config.network,
            config.input,
            config.loop.seed,
            micro_batches=plan.micro_batches,
            # Each replica takes its own per-replica batch from this worker's stream.
            start_step=start_step * dist.local_replicas,
            num_workers=num_workers,
            worker_index=worker_index,
        )

    return dataset_fn


def _initial_weights(config: Config, start) -> str | None:
    """The file a run that does not resume starts from: --restore_path's checkpoint, or
    --weights' file (downloaded now), so that a missing one fails before the run folder is
    written to."""
    loop = config.loop
    if start.checkpoint or not (loop.restore_path or loop.weights):
        return None
    if loop.restore_path:
        return rundir.resolve_checkpoint(loop.restore_path)[0]
    from vgg_keras import keras_weights

    top = keras_weights.wants_top(loop.restore_exclude)
    return keras_weights.locate(loop.weights, config.network.arch, print, top)


def _initialise(config, dist, built: TrainGraph, session, reporter, start, weights, plan):
    """Initial weights (a resumed checkpoint, ``weights``: --restore_path's or --weights' file,
    or fresh ones), the same on every worker; the input iterator at its start."""
    session.run(built.init_op)
    loop = config.loop
    if start.checkpoint:
        _resume(config, built, session, reporter, start, dist.is_chief)
    elif loop.restore_path:
        restored = checkpoints.restore_subset(
            session, weights, built.model.weights, loop.restore_exclude
        )
        reporter.print(f"initialised {len(restored)} variables from {weights}")
    elif loop.weights:
        from vgg_keras import keras_weights

        loaded = keras_weights.load(session, built.model, weights, loop.restore_exclude)
        note = "" if config.network.preprocess == "caffe" else " (they expect --preprocess caffe)"
        reporter.print(f"initialised {len(loaded)} layers from {weights}{note}")
    if built.broadcast_op is not None:
        session.run(built.broadcast_op)
    if built.load_device_loop is not None:
        built.load_device_loop(session, plan.call_steps)
    session.run(built.iterator_init)


def _start_notes(config: Config, dist, plan, step_flops: float) -> list[str]:
    notes = [dist.describe()] if dist.kind != "none" else []
    chosen = dist.session_config(config.runtime, step_flops).inter_op_parallelism_threads
    if not config.runtime.inter_op_threads and chosen == 1:
        notes.append(
            f"note: a training step is {step_flops / 1e9:,.0f} GFLOP, enough to fill the cores "
            "op by op: its ops run one at a time (--inter_op_threads sets how many at once)"
        )
    if plan.precision == "bf16" and not compat.fast_bf16():
        notes.append(
            "warning: --precision bf16 is emulated here (a CPU without avx512_bf16 or amx_bf16 "
            "and no GPU, or TensorFlow 1.15): many times slower than --precision fp32"
        )
    loop = config.loop
    if loop.display_every < plan.call_steps:
        notes.append(
            f"warning: --display_every {loop.display_every} < --iterations_per_loop "
            f"{plan.call_steps}: every session call stops at the next log step, so "
            f"loops run {loop.display_every} step(s), not {plan.call_steps}; raise "
            "--display_every to keep the loop sinking"
        )
    late = unreached(config.optimizer, plan.steps_per_epoch, plan.max_steps)
    if late:
        end = f"--max_epochs {loop.max_epochs:g}, step {plan.max_steps}"
        if loop.max_train_steps:
            end = f"--max_train_steps {loop.max_train_steps}"
        notes.append(
            f"warning: {late} is beyond the run's end ({end}): the rate never gets there; "
            "the schedule is not rescaled"
        )
    if loop.mode == "train_and_evaluate" and config.input.synthetic and not config.input.data_dir:
        notes.append("note: --synthetic without --data_dir has no validation data: training only")
    return notes


def _resume(config, built: TrainGraph, session, reporter, start, is_chief: bool) -> None:
    """Restore weights, global_step and (where the checkpoint has them) momentum, loss scale
    and the skipped-step count; then record the run's settings."""
    required = [built.global_step]
    optional = [v for v in built.state if v is not built.global_step]
    path = start.checkpoint
    absent = checkpoints.restore(session, path, built.model, required, optional)
    for line in [*start.notes, *_absent_notes(path, absent)]:
        reporter.print(line)
    if is_chief:  # only now: a checkpoint that does not fit leaves config.json untouched
        rundir.write_config(config.loop.log_dir, config.flat(), start.record)
    reporter.print(f"resumed from {path} at step {rundir.checkpoint_step(path)}")


def _absent_notes(path: str, absent) -> list[str]:
    """One line per kind of state the checkpoint did not have (another layout's checkpoint, a
    layer trained that was frozen, a precision change)."""
    names = [v.op.name for v in absent]
    slots = sum(n.endswith("/Momentum") for n in names)
    notes = [f"note: {path} holds no momentum for {slots} variable(s): from zero"] if slots else []
    if any("loss_scale" in n or n.endswith("good_steps") for n in names):
        notes.append(f"note: {path} holds no fp16 loss scale: a fresh one")
    return notes


def _describe_shard(split, num_workers: int, worker_index: int) -> str:
    """Which training files this worker reads (the workers' shares are disjoint)."""
    files, by_record, records = split.for_worker(num_workers, worker_index)
    names = ", ".join(os.path.basename(f) for f in files)
    how = f"every {num_workers}th record of" if by_record else f"{len(files)} of"
    return (
        f"worker {worker_index} of {num_workers} reads {how} {len(split.files)} train files: "
        f"{names} ({records} records per epoch)"
    )


def _fingerprint(arrays) -> str:
    """A short hash of the weights' bytes."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


class _Loop:
    """Trains to ``plan.max_steps``, logging, checkpointing and evaluating as the plan says.

    Every way out saves a checkpoint at the step reached (a signal, bad data, the end) except
    two: a non-finite loss or weights (that state is never saved, exit 3) and a checkpoint that
    cannot be written (RunError, exit 1).  Either way the newest checkpoint is the last good one.
    """

    def __init__(
        self, config, plan: clock.Plan, built: TrainGraph, session, reporter, evaluator, split
    ):
        self.config, self.plan, self.built, self.session = config, plan, built, session
        self.reporter, self.evaluator, self.split = reporter, evaluator, split
        self.log_dir = config.loop.log_dir
        self.step = int(session.run(built.global_step))
        # The starting state is a checkpoint already, or the initialisation: nothing is due.
        self.last = dict.fromkeys(clock.EVENTS, self.step)
        # Except an evaluation due there that never finished (a signal or a crash cut it short).
        if self.step and plan.due("evaluate", self.step - 1, self.step):
            if _unevaluated(self.log_dir, self.step):
                self.last["evaluate"] = self.step - 1
        # Restored with the weights: the first message of a resumed run counts only its own steps.
        self.skipped_steps = int(session.run(built.skipped_steps))
        self.speed = Throughput(plan.global_batch, plan.max_steps, self.step)
        self.plateau = ChancePlateau(config.network.class_num)
        self.bad_records = _count_bad_records(config, split, reporter)
        self.best = rundir.read_best(self.log_dir)
        self.voting = "stop" in built.step_fetches  # several workers: a signal is put to the vote
        self._signals = None
        self._calls = {}  # one_step -> its compat.SessionCall
        # Ascend's device loop runs where session.run is called.
        self.through_run = built.load_device_loop is not None

    def run(self, signals: StopSignals) -> int:
        """Returns the exit code."""
        self._signals = signals
        try:
            if self.plan.due("evaluate", self.last["evaluate"], self.step):
                self._evaluate(self.step)
                if not self.voting and signals.received is not None:
                    return self._stop(signals)
            while self.step < self.plan.max_steps:
                out, stop = self._train_call()
                self.reporter.advance(self.step, self.speed.eta_seconds())
                self._handle_due(out)
                if stop or (not self.voting and signals.received is not None):
                    return self._stop(signals)
        except _NonFinite as err:
            self.reporter.print(
                f"error: {err}; stopped without saving, the newest checkpoint is {self._newest()}"
            )
            return EXIT_NONFINITE
        except OSError as err:  # the log, metrics or events could not be written
            raise RunError(
                f"cannot write to --log_dir {self.log_dir} ({_why(err)}); the newest "
                f"checkpoint is {self._newest()}"
            ) from err
        summary = self.speed.summary()
        if summary and self.reporter.is_chief:
            self.reporter.print(summary)
        prefix = rundir.checkpoint_prefix(self.log_dir, self.step)
        self.reporter.print(f"done: {self.step} steps, checkpoint {prefix}")
        return 0

    def _handle_due(self, out: StepOutputs) -> None:
        """Log, save and evaluate, each when the plan says it is due at this step."""
        plan, step = self.plan, self.step
        if plan.due("log", self.last["log"], step):
            self._log(out)
        if plan.due("save", self.last["save"], step):
            self._save(step)
        if plan.due("evaluate", self.last["evaluate"], step):
            self._evaluate(step)

    def _train_call(self) -> tuple[StepOutputs, bool]:
        """One session call of up to --iterations_per_loop steps, ending where the plan says
        something is due; returns its StepOutputs, and (several workers) whether any of them
        had a signal before the call: all stop after the same call."""
        plan = self.plan
        n = plan.call_length(self.step)
        measure = plan.due("log", self.last["log"], self.step + n)
        values = [n, measure]
        if self.voting:  # a signal during this call stops the workers after the next one
            values.append(self._signals.received is not None)
        else:
            self._signals.until = self.step + n
        kind = (n == 1, measure)  # the first call of each kind is counted as a warm-up
        try:
            out = self.speed.timed(kind, lambda: self._call(n == 1)(*values), n)
        except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as err:
            c = self.config  # (no split: --synthetic, no file to blame)
            explained = self.split and diagnose.explain(
                err, self.split, c.network.class_num, c.input.label_offset
            )
            if not isinstance(explained, UsageError):
                raise
            # The steps before the bad batch were applied: keep them.
            self._save(int(self.session.run(self.built.global_step)))
            raise UsageError(f"{explained}; the newest checkpoint is {self._newest()}") from err
        stop = bool(out.get("stop", False))
        out = StepOutputs(**{name: out[name] for name in StepOutputs._fields})
        self.step = int(out.step)
        if not out.finite and self.config.optimizer.nan_policy == "stop":
            raise _NonFinite(f"loss is {out.total_loss} at step {self.step} (lr {out.lr:.6g})")
        return out, stop

    def _call(self, one_step: bool) -> compat.SessionCall:
        """The session call of one step, or of the sunk loop, made at its first use.

        Each set of fetches and fed placeholders is its own executor in the session, built and
        optimised at its first call: every call feeds the same placeholders.
        """
        if one_step not in self._calls:
            built = self.built
            fetches = built.step_fetches if one_step else built.loop_fetches
            feeds = [built.loop_steps, built.measure_grad_norm]
            if self.voting:
                feeds.append(built.stop_requested)
            call = compat.SessionCall(self.session, fetches, feeds, self.through_run)
            self._calls[one_step] = call
        return self._calls[one_step]

    def _log(self, out: StepOutputs) -> None:
        """The log line, metrics.jsonl and TensorBoard: the last step's values, the interval's
        training FPS."""
        extra = self.speed.interval()
        if self.config.optimizer.nan_policy == "skip_step":
            total = int(self.session.run(self.built.skipped_steps))
            if total > self.skipped_steps:
                self.reporter.print(
                    f"skipped {total - self.skipped_steps} step(s) with a non-finite loss up to "
                    f"step {self.step} (lr {out.lr:.6g}); {total} in this run's history"
                )
            self.skipped_steps = extra["skipped_steps"] = total
        if self.bad_records is not None:
            extra["skipped_records"] = self.bad_records
        epoch = self.plan.epoch(self.step)
        self.reporter.train_step(
            self.step, epoch, out, eta_seconds=self.speed.eta_seconds(), **extra
        )
        warning = self.plateau.observe(epoch, float(out.loss))
        if warning and self.reporter.is_chief:
            self.reporter.print(warning)
        self.last["log"] = self.step

    def _save(self, at: int) -> None:
        if at == self.last["save"] or not self.reporter.is_chief:  # only the chief writes
            self.last["save"] = at
            return
        # The loss check stops at the first bad step; this also catches an update that made
        # the weights overflow while its own loss was still finite.
        weights = self.session.run(self.built.model.trainable_weights)
        if not all(np.isfinite(w).all() for w in weights):
            raise _NonFinite(f"the weights are not finite at step {at}")
        prefix = os.path.join(self.log_dir, rundir.CHECKPOINT_PREFIX)
        try:
            with self.built.graph.as_default():  # the v1 Saver works only in graph mode
                self.built.saver.save(self.session, prefix, global_step=at, write_meta_graph=False)
        except (tf.errors.OpError, OSError) as err:
            rundir.remove_partial(self.log_dir)  # give back what a failed save took
            raise RunError(
                f"cannot write checkpoint {prefix}-{at} ({_why(err)}); the newest "
                f"checkpoint is {self._newest()}"
            ) from err
        # Only after a save succeeded: never below one good checkpoint; the best stays.
        best = self.best["step"] if self.best else None
        rundir.remove_oldest(self.log_dir, self.config.loop.keep_checkpoint_max, protect=best)
        self.last["save"] = at

    def _evaluate(self, at: int) -> None:
        self._save(at)
        self.last["evaluate"] = at
        try:
            # Alone, a signal stops the evaluation at its next batch; workers evaluate to the
            # end together (their batches are collectives) and then vote.
            alone = None if self.voting else (lambda: self._signals.received is not None)
            result = self.evaluator.evaluate(rundir.checkpoint_prefix(self.log_dir, at), stop=alone)
        except evaluation.Stopped:
            return  # the checkpoint is saved; the loop stops at its signal check
        self.evaluator.report([result], self.reporter)
        self.plateau.eval_top1 = result["top1"]
        if self.reporter.is_chief and (self.best is None or result["top1"] > self.best["top1"]):
            rundir.write_best(self.log_dir, at, result["top1"])
            self.best = rundir.read_best(self.log_dir)

    def _stop(self, signals: StopSignals) -> int:
        """Save (the chief does) and stop: after this worker's signal, or another worker's (a
        stop exits 143 then, as after a SIGTERM of its own)."""
        self._save(self.step)
        received = signals.received or signal.SIGTERM
        name = signal.Signals(received).name if signals.received else "another worker's signal"
        code = exit_code(received)
        prefix = rundir.checkpoint_prefix(self.log_dir, self.step)
        what = f"saved {prefix}" if self.reporter.is_chief else "the chief saved it"
        self.reporter.print(f"{name}: stopped at step {self.step}, {what} (exit {code})")
        return code

    def _newest(self) -> str:
        return rundir.latest_checkpoint(self.log_dir) or "none"


def _unevaluated(log_dir: str, step: int) -> bool:
    """Whether ``log_dir``'s newest checkpoint is that of ``step`` (not one of another folder
    a branch resumed from) and metrics.jsonl records no evaluation of it (unreadable: none)."""
    if rundir.latest_checkpoint(log_dir) != rundir.checkpoint_prefix(log_dir, step):
        return False
    with contextlib.suppress(OSError, ValueError, AttributeError, RecursionError):
        return not any(r.get("step") == step and "eval_top1" in r for r in read_metrics(log_dir))
    return True


class _NonFinite(Exception):
    """A NaN/Inf loss or weights: the run stops without saving that state."""


def _why(err: Exception) -> str:
    """The OS's reason ("No space left on device"); TensorFlow writes "<file>; <reason>"."""
    return reason(err).rsplit("; ", 1)[-1]


def _count_bad_records(config: Config, split, reporter) -> int | None:
    """--skip_corrupt: the training split's unusable records (read once, at the start)."""
    if not config.input.skip_corrupt or split is None:
        return None
    count = diagnose.count_bad_records(
        list(split.files),
        config.network.class_num,
        config.input.label_offset,
        parse=split.parse,
        expected=list(split.counts),
    )
    reporter.print(f"--skip_corrupt: {count} unusable training record(s), skipped every epoch")
    return count
