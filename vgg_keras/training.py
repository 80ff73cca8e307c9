"""The training graph and the explicit ``tf.compat.v1.Session`` loop.

Read top to bottom: the loss; one graph (input iterator -> Keras model -> loss -> Nesterov
momentum -> train op; the same step also wrapped in a ``tf.while_loop`` for loop sinking); the
step arithmetic of a run; ``train``, which sets the run up (its folder, the graph, the session,
the evaluator, all owned by one ExitStack); and ``_Loop``, which runs the graph, logging,
checkpointing and evaluating on the way.  A run whose log folder holds a checkpoint resumes
from it: weights, momentum, global_step and the position in the input stream.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import signal
from collections.abc import Callable

import numpy as np

from vgg_keras import checkpoints, compat, distribute, evaluation, rundir, schedules
from vgg_keras import model as model_lib
from vgg_keras.compat import keras, tf, v1
from vgg_keras.config import Config
from vgg_keras.data import pipeline
from vgg_keras.errors import EXIT_NONFINITE, RunError, UsageError, reason
from vgg_keras.plateau import ChancePlateau
from vgg_keras.reporting import Reporter
from vgg_keras.signals import StopSignals
from vgg_keras.throughput import Throughput

IMAGENET_TRAIN_IMAGES = 1_281_167  # epoch length for --synthetic without a dataset
# What a training call returns: the values after its last step.
STEP_OUTPUTS = ("loss", "total_loss", "lr", "finite", "step", "grad_norm")


# ---------------------------------------------------------------------------------------------
# Loss


def cross_entropy(logits, labels, num_classes: int, label_smoothing: float = 0.0):
    """Mean softmax cross-entropy in float32 against smoothed one-hot labels."""
    return v1.losses.softmax_cross_entropy(
        tf.one_hot(labels, num_classes, dtype=tf.float32),
        tf.cast(logits, tf.float32),
        label_smoothing=label_smoothing,
        loss_collection=None,
        reduction=v1.losses.Reduction.MEAN,
    )


def weight_decay_loss(model: keras.Model, weight_decay: float, decay_biases: bool = False):
    """``weight_decay * sum(l2_loss(w))`` over kernels (and biases with ``decay_biases``).

    ``tf.nn.l2_loss`` is half the sum of squares, the convention of TF-slim and the reference.
    """
    weights = model.trainable_weights if decay_biases else model_lib.kernel_variables(model)
    if not weight_decay or not weights:
        return tf.constant(0.0)
    return weight_decay * tf.add_n([tf.nn.l2_loss(tf.cast(w, tf.float32)) for w in weights])


# ---------------------------------------------------------------------------------------------
# Graph


@dataclasses.dataclass
class TrainGraph:
    graph: tf.Graph
    model: keras.Model
    global_step: tf.Variable
    init_op: tf.Operation
    iterator_init: tf.Operation
    step_fetches: dict  # one training step
    loop_fetches: dict  # ``loop_steps`` training steps in one tf.while_loop
    loop_steps: tf.Tensor  # placeholder: how many steps the while loop runs
    measure_grad_norm: tf.Tensor  # placeholder: compute the call's last gradient norm
    skipped_steps: tf.Variable
    saver: v1.train.Saver
    # Ascend only: gives every rank rank 0's weights (run after init/restore); sets the number
    # of steps its device loop runs per session call.
    broadcast_op: tf.Operation | None = None
    load_device_loop: Callable[[v1.Session, int], None] | None = None


@dataclasses.dataclass
class _StepBuilder:
    """Builds one training step: the next batch, forward and backward on every replica, the
    update.  Called once for the single step and once inside the while loop's body; both share
    the model, the optimizer and its momentum slots."""

    config: Config
    dist: distribute.Distribution
    model: keras.Model
    optimizer: v1.train.Optimizer
    global_step: tf.Variable
    skipped: tf.Variable
    next_batch: Callable
    learning_rate: Callable  # learning_rate(step tensor) -> the schedule at that step

    def forward_backward(self, images, labels, measure_grad_norm):
        """On one replica: [loss, total_loss, gradient norm] and the gradients of its share of
        the batch."""
        c = self.config
        logits = self.model(images, training=True)
        loss = cross_entropy(logits, labels, c.class_num, c.label_smoothing)
        total_loss = loss + weight_decay_loss(self.model, c.weight_decay, c.decay_biases)
        # The strategy sums gradients over replicas: the sum of these is the gradient of the
        # mean loss over the global batch.
        grads = self.optimizer.compute_gradients(
            total_loss / self.dist.in_sync, self.model.trainable_weights
        )
        # The norm of this replica's gradient of its mean loss, on steps that end a log interval
        # (NaN on the others: it costs a pass over every gradient): a run whose gradients vanish
        # or explode shows it in metrics.jsonl from the first line on.
        grad_norm = tf.cond(
            measure_grad_norm,
            lambda: tf.linalg.global_norm([g for g, _ in grads]) * self.dist.in_sync,
            lambda: tf.constant(float("nan")),
        )
        return tf.stack([loss, total_loss, grad_norm]), grads

    def apply_on_replica(self, grads, clip_by_norm=None):
        """The update, with the gradients scaled by ``clip_grad_norm / clip_by_norm`` when that
        is below 1 (NaN when the norm is not finite: the loss-scale optimizer then skips)."""
        if clip_by_norm is not None:
            clipped, _ = tf.clip_by_global_norm(
                [g for g, _ in grads], self.config.clip_grad_norm, use_norm=clip_by_norm
            )
            grads = [(g, v) for g, (_, v) in zip(clipped, grads)]
        with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
            return self.optimizer.apply_gradients(grads, self.global_step)

    def __call__(self, measure_grad_norm):
        """One update; returns (the STEP_OUTPUTS after it, train op)."""
        dist = self.dist
        images, labels = self.next_batch()
        losses, grads = dist.run(self.forward_backward, images, labels, measure_grad_norm)
        loss, total_loss, grad_norm = tf.unstack(dist.reduce(distribute.ReduceOp.MEAN, losses))
        # The mean over replicas is finite only if every replica's loss is, and every worker
        # sees the same value: all replicas take the same branch below.
        finite = tf.math.is_finite(total_loss)
        clip_by_norm = None
        if self.config.clip_grad_norm > 0:
            # Clipped by the norm of the global batch's gradient (the sum of the replicas'
            # shares: one more all-reduce on several replicas), so that N replicas still take
            # the steps of one device.  It is also the norm logged, before clipping.
            summed = dist.sum_over_replicas([g for g, _ in grads])
            clip_by_norm = tf.linalg.global_norm(summed)
            grad_norm = clip_by_norm

        def apply():
            return dist.group(dist.run(self.apply_on_replica, grads, clip_by_norm))

        def skip():
            return tf.group(v1.assign_add(self.global_step, 1), v1.assign_add(self.skipped, 1))

        if self.config.nan_policy == "skip_step":
            train_op = tf.cond(finite, apply, skip)
        else:
            train_op = apply()
        with tf.control_dependencies([train_op]):
            # Read after the update: the step this call ended on.  The update used the
            # learning rate of the step before it.
            step = self.global_step.read_value()
            lr = self.learning_rate(step - 1)
            outputs = (tf.identity(loss), tf.identity(total_loss), lr, finite, step, grad_norm)
        return outputs, train_op


def build_train_graph(
    config: Config,
    dataset_fn,
    steps_per_epoch: float,
    global_batch: int,
    dist: distribute.Distribution | None = None,
) -> TrainGraph:
    """Build the training graph; ``dataset_fn(num_workers, worker_index)`` returns this worker's
    tf.data.Dataset of per-replica batches.

    Under a strategy every replica computes the gradients of its share of the global batch, the
    strategy sums them over all replicas and every replica applies the same update.
    """
    dist = dist or distribute.single_device()
    graph = tf.Graph()
    with graph.as_default(), dist.scope():
        v1.set_random_seed(config.seed)
        with compat.precision_policy(dist.model_precision(config.precision)):
            model = model_lib.from_config(config, training=True)
        global_step = v1.train.get_or_create_global_step()
        skipped = v1.Variable(0, dtype=tf.int64, trainable=False, name="skipped_steps")
        iterator_init, next_batch = dist.input_iterator(dataset_fn)

        def learning_rate(step):
            return schedules.learning_rate(step, config, steps_per_epoch, global_batch)

        # One optimizer (its momentum slots are shared by the single step and the loop body);
        # it calls its learning rate where each step is built, reading that step's global_step.
        optimizer = v1.train.MomentumOptimizer(
            lambda: learning_rate(global_step), config.momentum, use_nesterov=config.use_nesterov
        )
        one_step = _StepBuilder(
            config,
            dist,
            model,
            dist.wrap_optimizer(optimizer, config.precision),
            global_step,
            skipped,
            next_batch,
            learning_rate,
        )
        # The single step is built first so that the optimizer's slot variables are created
        # outside the while loop; the loop body then reuses them.
        measure_grad_norm = v1.placeholder_with_default(False, [], "measure_grad_norm")
        step_outputs, step_op = one_step(measure_grad_norm)
        step_fetches = dict(zip(STEP_OUTPUTS, step_outputs))
        loop_steps = v1.placeholder_with_default(tf.constant(1, tf.int32), [], "loop_steps")
        device_loop = dist.device_loop(step_op)
        load_device_loop = None
        if device_loop is not None:  # Ascend: the device repeats the step itself
            loop_op, load_device_loop = device_loop
            loop_fetches = {**step_fetches, "device_loop": loop_op}
        else:
            loop_fetches = _sunk_steps(
                one_step, loop_steps, measure_grad_norm, config.nan_policy == "stop"
            )
        broadcast_op = dist.broadcast(model.weights)
        saver = v1.train.Saver(
            max_to_keep=config.keep_checkpoint_max, save_relative_paths=True, pad_step_number=False
        )
        init_op = v1.global_variables_initializer()
    graph.finalize()  # from here on, nothing may add ops: the loop would grow the graph
    return TrainGraph(
        graph,
        model,
        global_step,
        init_op,
        iterator_init,
        step_fetches,
        loop_fetches,
        loop_steps,
        measure_grad_norm,
        skipped,
        saver,
        broadcast_op,
        load_device_loop,
    )


def _sunk_steps(one_step: _StepBuilder, loop_steps, measure_grad_norm, stop_on_nan: bool) -> dict:
    """``loop_steps`` training steps in one tf.while_loop (loop sinking); the fetches of the
    last step run (the gradient norm, when asked for, of the last step only).  With --nan_policy
    stop the loop ends at the first non-finite loss."""

    def keep_going(i, *last):
        more = i < loop_steps
        return tf.logical_and(more, last[3]) if stop_on_nan else more

    def body(i, *_last):
        last_step = tf.logical_and(measure_grad_norm, tf.equal(i + 1, loop_steps))
        return (i + 1, *one_step(last_step)[0])

    zero = tf.constant(0.0)
    initial = [zero, zero, zero, tf.constant(True), tf.constant(0, tf.int64), zero]
    _, *last = tf.while_loop(
        keep_going, body, [tf.constant(0), *initial], parallel_iterations=1, name="sunk_steps"
    )
    return dict(zip(STEP_OUTPUTS, last))


# ---------------------------------------------------------------------------------------------
# Run


@dataclasses.dataclass
class RunPlan:
    """Step arithmetic of a run, derived once from the config and the dataset size."""

    train_images: int
    global_batch: int
    steps_per_epoch: float
    max_steps: int
    save_every: int
    eval_every: int | None

    def epoch(self, step: int) -> float:
        return step / self.steps_per_epoch


def plan_run(config: Config, train_images: int, num_replicas: int = 1) -> RunPlan:
    global_batch = config.batch_size * num_replicas
    steps_per_epoch = max(train_images / global_batch, 1e-9)
    max_steps = config.max_train_steps or max(1, round(config.max_epochs * steps_per_epoch))
    save_every = config.save_checkpoints_steps or max(1, round(steps_per_epoch))
    eval_every = None
    if config.mode == "train_and_evaluate" and not _no_validation_data(config):
        eval_every = max(1, round(config.epochs_between_evals * steps_per_epoch))
    return RunPlan(train_images, global_batch, steps_per_epoch, max_steps, save_every, eval_every)


def _no_validation_data(config: Config) -> bool:
    return config.synthetic and config.data_dir is None


def loop_intervals(config: Config, plan: RunPlan) -> dict:
    """Every interval at which the loop must stop a session call (Npu.check_intervals)."""
    return {
        "steps": plan.max_steps,
        "save": plan.save_every,
        "eval": plan.eval_every,
        "log": config.display_every,
    }


def _train_split(config: Config):
    if config.synthetic and config.data_dir is None:
        return None
    return pipeline.load_split(
        config.data_dir, "train", config.tfds_data_dir, skip_corrupt=config.skip_corrupt
    )


def _dataset_fn(config: Config, split, start_step: int, dist: distribute.Distribution):
    """``dataset_fn(num_workers, worker_index)`` for build_train_graph: this worker's stream,
    from ``start_step`` on."""

    def dataset_fn(num_workers: int, worker_index: int):
        if config.synthetic:
            return pipeline.synthetic_dataset(
                config.batch_size, config.image_size, config.class_num, config.seed
            )
        return pipeline.train_dataset(
            split,
            config.batch_size,
            config.image_size,
            config.class_num,
            seed=config.seed,
            # Each replica takes its own per-replica batch from this worker's stream.
            start_step=start_step * dist.local_replicas,
            num_workers=num_workers,
            worker_index=worker_index,
            label_offset=config.label_offset,
            shuffle_buffer=config.shuffle_buffer,
            min_object_covered=config.min_object_covered,
            area_range=config.area_range,
            aspect_ratio_range=config.aspect_ratio_range,
            skip_corrupt=config.skip_corrupt,
            normalization=config.preprocess,
        )

    return dataset_fn


def train(config: Config) -> int:
    """Train (``--mode train`` or ``train_and_evaluate``); returns the process exit code.

    One ExitStack owns what the run holds (the log_dir lock, the session, the reporter, the
    evaluator) and closes it however the run ends.
    """
    dist = distribute.create(config)  # first: it may configure devices and start a server
    split = _train_split(config)
    plan = plan_run(
        config, split.num_examples if split else IMAGENET_TRAIN_IMAGES, dist.num_replicas
    )
    dist.check_intervals(config.iterations_per_loop, loop_intervals(config, plan))
    with contextlib.ExitStack() as stack:
        if dist.is_chief:
            resume_from = rundir.prepare(config, stack)
        else:  # the chief prepares the log folder; the others only read its newest checkpoint
            resume_from = (
                None if config.overwrite else checkpoints.latest_checkpoint(config.log_dir)
            )
        start_step = checkpoints.checkpoint_step(resume_from) if resume_from else 0
        dataset_fn = _dataset_fn(config, split, start_step, dist)
        tg = build_train_graph(config, dataset_fn, plan.steps_per_epoch, plan.global_batch, dist)
        evaluator = None
        if plan.eval_every:
            evaluator = stack.enter_context(
                evaluation.Evaluator(config, plan.steps_per_epoch, dist=dist)
            )
        session_config = compat.session_config(
            config.intra_op_threads, config.inter_op_threads, config.xla
        )
        session = stack.enter_context(contextlib.closing(dist.session(tg.graph, session_config)))
        reporter = Reporter(
            config.log_dir,
            config.log_name,
            is_chief=dist.is_chief,
            total_steps=plan.max_steps,
            initial_step=start_step,
            progress=config.progress,
        )
        stack.callback(reporter.close)
        try:
            _initialise(config, dist, tg, session, reporter, resume_from, split)
            with StopSignals() as signals:
                code = _Loop(config, plan, tg, session, reporter, evaluator, split).run(signals)
            if code == 0 and dist.num_workers > 1:
                # Equal on every worker when they stayed in sync (bit-identical weights).
                weights = session.run(tg.model.weights)
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


def _initialise(config, dist, tg: TrainGraph, session, reporter, resume_from, split) -> None:
    """Initial weights (a resumed checkpoint, --restore_path, --weights, or fresh ones), the
    same on every worker; the input iterator at its start."""
    if dist.kind != "none":
        reporter.print(dist.describe())
    if dist.model_precision(config.precision) == "bf16" and not compat.fast_bf16():
        reporter.print(
            "warning: --precision bf16 is emulated here (a CPU without avx512_bf16 or amx_bf16 "
            "and no GPU, or TensorFlow 1.15): many times slower than --precision fp32"
        )
    if config.display_every < config.iterations_per_loop:
        reporter.print(
            f"warning: --display_every {config.display_every} < --iterations_per_loop "
            f"{config.iterations_per_loop}: every session call stops at the next log step, so "
            f"loops run {config.display_every} step(s), not {config.iterations_per_loop}; raise "
            "--display_every to keep the loop sinking"
        )
    if config.mode == "train_and_evaluate" and _no_validation_data(config):
        reporter.print("note: --synthetic without --data_dir has no validation data: training only")
    if split is not None and dist.num_workers > 1:
        reporter.print(_describe_shard(split, dist.num_workers, dist.worker_index))
    session.run(tg.init_op)
    if resume_from:
        checkpoints.check_compatible(resume_from, tg.model.weights)
        checkpoints.restore(tg.saver, session, resume_from)
        if dist.is_chief:  # only now: a checkpoint that does not fit leaves it untouched
            rundir.write_config(config)
        # A new Saver knows only its own checkpoints: without this, --keep_checkpoint_max
        # would never delete the ones written before the resume.
        tg.saver.recover_last_checkpoints(checkpoints.list_checkpoints(config.log_dir))
        step = checkpoints.checkpoint_step(resume_from)
        reporter.print(f"resumed from {resume_from} at step {step}")
    elif config.restore_path:
        with tg.graph.as_default():
            restored = checkpoints.restore_subset(
                session,
                checkpoints.resolve(config.restore_path),
                tg.model.weights,
                config.restore_exclude,
            )
        reporter.print(f"initialised {len(restored)} variables from {config.restore_path}")
    elif config.weights:
        from vgg_keras import keras_weights

        path = keras_weights.path_of(config.weights)
        loaded = keras_weights.load(session, tg.model, path, config.restore_exclude)
        note = "" if config.preprocess == "caffe" else " (they expect --preprocess caffe)"
        reporter.print(f"initialised {len(loaded)} layers from {config.weights}{note}")
    if tg.broadcast_op is not None:
        session.run(tg.broadcast_op)
    if tg.load_device_loop is not None:
        tg.load_device_loop(session, config.iterations_per_loop)
    session.run(tg.iterator_init)


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


def _steps_to(step: int, every: int | None) -> int:
    """Steps from ``step`` to the next multiple of ``every`` (never, without ``every``)."""
    return (step // every + 1) * every - step if every else 1 << 62


def _logs_at(step: int, last_log_step: int, display_every: int, max_steps: int) -> bool:
    """Whether reaching ``step`` ends a log interval: a multiple of --display_every passed
    since the last line, or the end of the run."""
    return step // display_every > last_log_step // display_every or step >= max_steps


def _itstime(step: int, every: int | None) -> bool:
    """True when ``step`` is a multiple of ``every`` (never, without ``every``)."""
    return bool(every) and step % every == 0


class _Loop:
    """Trains to ``plan.max_steps``, logging, checkpointing and evaluating on the way.

    Every way out saves a checkpoint at the step reached (a signal, bad data, the end) except
    two: a non-finite loss or weights (that state is never saved, exit 3) and a checkpoint that
    cannot be written (RunError, exit 1).  Either way the newest checkpoint is the last good one.
    """

    def __init__(self, config, plan, tg: TrainGraph, session, reporter, evaluator, split):
        self.config, self.plan, self.tg, self.session = config, plan, tg, session
        self.reporter, self.evaluator, self.split = reporter, evaluator, split
        self.prefix = os.path.join(config.log_dir, checkpoints.PREFIX)
        self.step = int(session.run(tg.global_step))
        # The starting state is a checkpoint already, or the initialisation: nothing to save.
        self.last_saved = self.last_logged = self.step
        # Restored with the weights: the first message of a resumed run counts only its own steps.
        self.skipped_steps = int(session.run(tg.skipped_steps))
        self.speed = Throughput(plan.global_batch)
        self.plateau = ChancePlateau(config.class_num)
        self.bad_records = _count_bad_records(config, split, reporter)
        self._signals = StopSignals()  # run() puts the installed one here

    def run(self, signals: StopSignals) -> int:
        """Returns the exit code."""
        plan = self.plan
        self._signals = signals
        try:
            while self.step < plan.max_steps:
                out = self._train_call()
                self.reporter.advance(self.step)
                if self._logs_at(self.step):
                    self._log(out)
                if _itstime(self.step, plan.save_every):
                    self._save(self.step)
                if _itstime(self.step, plan.eval_every) and self.step < plan.max_steps:
                    self._evaluate(self.step)
                if signals.received is not None:
                    return self._stop(signals)
            self._save(self.step)
            if self.evaluator is not None:
                self._evaluate(self.step)
            if signals.received is not None:  # during the last evaluation
                return self._stop(signals)
        except _NonFinite as err:
            self.reporter.print(
                f"error: {err}; stopped without saving, the newest checkpoint is {self._newest()}"
            )
            return EXIT_NONFINITE
        except OSError as err:  # the log, metrics or events could not be written
            raise RunError(
                f"cannot write to --log_dir {self.config.log_dir} ({_why(err)}); the newest "
                f"checkpoint is {self._newest()}"
            ) from err
        summary = self.speed.summary()
        if summary:
            self.reporter.print(summary)
        self.reporter.print(f"done: {self.step} steps, checkpoint {self.prefix}-{self.step}")
        return 0

    def _train_call(self) -> dict:
        """One session call of up to --iterations_per_loop steps, ending at the next step that
        logs, saves, evaluates or ends the run; returns its STEP_OUTPUTS."""
        config, plan, step, tg = self.config, self.plan, self.step, self.tg
        n = min(
            config.iterations_per_loop,
            plan.max_steps - step,
            _steps_to(step, config.display_every),
            _steps_to(step, plan.save_every),
            _steps_to(step, plan.eval_every),
        )
        fetches, feed = (tg.step_fetches, {}) if n == 1 else (tg.loop_fetches, {tg.loop_steps: n})
        if self._logs_at(step + n):
            feed[tg.measure_grad_norm] = True
        # Each set of fed placeholders is its own executor in the session: its first call is
        # the warm-up of that kind.
        kind = (n == 1, tg.measure_grad_norm in feed)
        try:
            out = self.speed.timed(kind, lambda: self.session.run(fetches, feed), n)
        except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as err:
            explained = _explain_data_error(err, config, self.split)
            if not isinstance(explained, UsageError):
                raise
            # The steps before the bad batch were applied: keep them.
            self._save(int(self.session.run(tg.global_step)))
            raise UsageError(f"{explained}; the newest checkpoint is {self._newest()}") from err
        except tf.errors.OutOfRangeError as err:
            raise UsageError(f"{config.data_dir}: training data ran out at step {step}") from err
        self.step = int(out["step"])
        if not out["finite"] and config.nan_policy == "stop":
            raise _NonFinite(
                f"loss is {out['total_loss']} at step {self.step} (lr {out['lr']:.6g})"
            )
        return out

    def _log(self, out: dict) -> None:
        """The log line, metrics.jsonl and TensorBoard: the last step's values, the interval's
        training FPS."""
        extra = self.speed.interval()
        fps = extra.pop("fps")
        if self.config.nan_policy == "skip_step":
            total = int(self.session.run(self.tg.skipped_steps))
            if total > self.skipped_steps:
                self.reporter.print(
                    f"skipped {total - self.skipped_steps} step(s) with a non-finite loss up to "
                    f"step {self.step} (lr {out['lr']:.6g}); {total} in this run's history"
                )
            self.skipped_steps = extra["skipped_steps"] = total
        if self.bad_records is not None:
            extra["skipped_records"] = self.bad_records
        epoch = self.plan.epoch(self.step)
        self.reporter.train_step(
            self.step,
            epoch,
            fps,
            out["loss"],
            out["total_loss"],
            out["lr"],
            grad_norm=out["grad_norm"],
            **extra,
        )
        warning = self.plateau.observe(epoch, float(out["loss"]))
        if warning:
            self.reporter.print(warning)
        self.last_logged = self.step

    def _logs_at(self, step: int) -> bool:
        return _logs_at(step, self.last_logged, self.config.display_every, self.plan.max_steps)

    def _save(self, at: int) -> None:
        if at == self.last_saved or not self.reporter.is_chief:  # only the chief writes
            return
        # The loss check stops at the first bad step; this also catches an update that made
        # the weights overflow while its own loss was still finite.
        weights = self.session.run(self.tg.model.trainable_weights)
        if not all(np.isfinite(w).all() for w in weights):
            raise _NonFinite(f"the weights are not finite at step {at}")
        try:
            with self.tg.graph.as_default():  # the v1 Saver works only in graph mode
                self.tg.saver.save(
                    self.session, self.prefix, global_step=at, write_meta_graph=False
                )
        except (tf.errors.OpError, OSError) as err:
            checkpoints.remove_partial(self.config.log_dir)  # give back what a failed save took
            raise RunError(
                f"cannot write checkpoint {self.prefix}-{at} ({_why(err)}); the newest "
                f"checkpoint is {self._newest()}"
            ) from err
        # Only after a save succeeded: never below one good checkpoint.
        if checkpoints.remove_oldest(self.config.log_dir, self.config.keep_checkpoint_max):
            self.tg.saver.recover_last_checkpoints(
                checkpoints.list_checkpoints(self.config.log_dir)
            )
        self.last_saved = at

    def _evaluate(self, at: int) -> None:
        self._save(at)
        try:
            result = self.evaluator.evaluate(
                f"{self.prefix}-{at}", stop=lambda: self._signals.received is not None
            )
        except evaluation.Stopped:
            return  # the checkpoint is saved; the loop stops at its signal check
        self.evaluator.report([result], self.reporter)

    def _stop(self, signals: StopSignals) -> int:
        self._save(self.step)
        name = signal.Signals(signals.received).name
        self.reporter.print(
            f"{name}: stopped at step {self.step}, saved {self.prefix}-{self.step} "
            f"(exit {signals.exit_code})"
        )
        return signals.exit_code

    def _newest(self) -> str:
        return checkpoints.latest_checkpoint(self.config.log_dir) or "none"


class _NonFinite(Exception):
    """A NaN/Inf loss or weights: the run stops without saving that state."""


def _why(err: Exception) -> str:
    """The OS's reason ("No space left on device") from an OSError or a TensorFlow error."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return reason(err).rsplit("; ", 1)[-1]  # TensorFlow writes "<file>; <reason>"


def _count_bad_records(config: Config, split, reporter) -> int | None:
    """--skip_corrupt: the training split's unusable records (read once, at the start)."""
    if not config.skip_corrupt or split is None:
        return None
    from vgg_keras.data import diagnose

    count = diagnose.count_bad_records(
        list(split.files),
        config.class_num,
        config.label_offset,
        parse=split.parse,
        expected=list(split.counts),
    )
    reporter.print(f"--skip_corrupt: {count} unusable training record(s), skipped every epoch")
    return count


def _explain_data_error(err, config: Config, split) -> Exception:
    """Turn a TF error raised by the input pipeline into a one-line message naming the file."""
    if split is None:
        return err
    from vgg_keras.data import diagnose

    return diagnose.explain(
        err, list(split.files), config.class_num, config.label_offset, parse=split.parse
    )
