"""The training graph and the explicit ``tf.compat.v1.Session`` loop.

Read top to bottom: resolve the data and the log folder, build one graph (input iterator ->
Keras model -> loss -> Nesterov momentum -> train op; the same step also wrapped in a
``tf.while_loop`` for loop sinking), then run it, logging, checkpointing and evaluating on the
way.  A run whose log folder holds a checkpoint resumes from it: weights, momentum, global_step
and the position in the input stream.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

import numpy as np

from vgg_keras import checkpoints, compat, distribute, runlock, schedules
from vgg_keras.compat import keras, tf, v1
from vgg_keras.config import Config
from vgg_keras.data import info, pipeline
from vgg_keras.errors import (
    EXIT_NONFINITE,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    RunError,
    UsageError,
    reason,
)
from vgg_keras.model import build_vgg
from vgg_keras.plateau import ChancePlateau
from vgg_keras.reporting import METRICS_FILE, Reporter

IMAGENET_TRAIN_IMAGES = 1_281_167  # epoch length for --synthetic without a dataset
CONFIG_FILE = "config.json"
# Settings that define the network: a checkpoint only fits a run that agrees on all of them.
MODEL_KEYS = ("arch", "class_num", "image_size", "width_multiplier", "preprocess")


# ---------------------------------------------------------------------------------------------
# Loss


def cross_entropy(logits, labels, num_classes: int, label_smoothing: float = 0.0):
    """Mean softmax cross-entropy in float32 against smoothed one-hot labels."""
    onehot = tf.one_hot(labels, num_classes, dtype=tf.float32)
    if label_smoothing:
        onehot = onehot * (1.0 - label_smoothing) + label_smoothing / num_classes
    per_image = tf.nn.softmax_cross_entropy_with_logits(
        labels=onehot, logits=tf.cast(logits, tf.float32)
    )
    return tf.reduce_mean(per_image)


def weight_decay_loss(model: keras.Model, weight_decay: float, decay_biases: bool = False):
    """``weight_decay * sum(l2_loss(w))`` over kernels (and biases with ``decay_biases``).

    ``tf.nn.l2_loss`` is half the sum of squares, the convention of TF-slim and the reference.
    """
    weights = [w for w in model.trainable_weights if decay_biases or "kernel" in w.name]
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
            model = build_vgg(
                config.arch,
                config.class_num,
                config.image_size,
                config.width_multiplier,
                config.dropout,
                config.dense_init,
                config.conv_init,
                # Keras initializers ignore the graph seed (unseeded ones draw from Python's
                # `random`), so --seed reaches the weights only through here.
                weight_seed=config.seed,
            )
        global_step = v1.train.get_or_create_global_step()
        skipped = v1.Variable(0, dtype=tf.int64, trainable=False, name="skipped_steps")
        iterator_init, next_batch = dist.input_iterator(dataset_fn)
        # The optimizer is created once (its momentum slots must be shared by the single step
        # and the loop body); its learning rate is the schedule tensor of the step being built.
        step_lr = []
        optimizer = dist.wrap_optimizer(
            v1.train.MomentumOptimizer(
                lambda: step_lr[-1], config.momentum, use_nesterov=config.use_nesterov
            ),
            config.precision,
        )

        def forward_backward(images, labels, measure_grad_norm):
            """On one replica: [loss, total_loss, gradient norm] and the gradients of its share
            of the batch."""
            logits = model(images, training=True)
            loss = cross_entropy(logits, labels, config.class_num, config.label_smoothing)
            total_loss = loss + weight_decay_loss(model, config.weight_decay, config.decay_biases)
            # The strategy sums gradients over replicas: the sum of these is the gradient of
            # the mean loss over the global batch.
            grads = optimizer.compute_gradients(total_loss / dist.in_sync, model.trainable_weights)
            # The norm of this replica's gradient of its mean loss, on steps that end a log
            # interval (NaN on the others: it costs a pass over every gradient): a run whose
            # gradients vanish or explode shows it in metrics.jsonl from the first line on.
            grad_norm = tf.cond(
                measure_grad_norm,
                lambda: tf.linalg.global_norm([g for g, _ in grads]) * dist.in_sync,
                lambda: tf.constant(float("nan")),
            )
            return tf.stack([loss, total_loss, grad_norm]), grads

        def apply_on_replica(grads):
            with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
                return optimizer.apply_gradients(grads, global_step)

        def one_step(measure_grad_norm):
            """One update; returns ((loss, total_loss, lr, finite, step, grad_norm) after it,
            train op)."""
            images, labels = next_batch()
            lr = schedules.learning_rate(global_step, config, steps_per_epoch, global_batch)
            step_lr.append(lr)
            losses, grads = dist.run(forward_backward, images, labels, measure_grad_norm)
            loss, total_loss, grad_norm = tf.unstack(dist.reduce(distribute.ReduceOp.MEAN, losses))
            # The mean over replicas is finite only if every replica's loss is, and every
            # worker sees the same value: all replicas take the same branch below.
            finite = tf.math.is_finite(total_loss)

            def apply():
                return dist.group(dist.run(apply_on_replica, grads))

            if config.nan_policy == "skip_step":

                def skip():
                    return tf.group(v1.assign_add(global_step, 1), v1.assign_add(skipped, 1))

                train_op = tf.cond(finite, apply, skip)
            else:
                train_op = apply()
            with tf.control_dependencies([train_op]):
                # Read after the update: the step this call ended on.
                step = global_step.read_value()
                outputs = (tf.identity(loss), tf.identity(total_loss), lr, finite, step, grad_norm)
            return outputs, train_op

        # The single step is built first so that the optimizer's slot variables are created
        # outside the while loop; the loop body then reuses them.
        names = ("loss", "total_loss", "lr", "finite", "step", "grad_norm")
        measure_grad_norm = v1.placeholder_with_default(False, [], "measure_grad_norm")
        step_outputs, step_op = one_step(measure_grad_norm)
        step_fetches = dict(zip(names, step_outputs))

        loop_steps = v1.placeholder_with_default(tf.constant(1, tf.int32), [], "loop_steps")
        device_loop = dist.device_loop(step_op)
        load_device_loop = None
        if device_loop is not None:  # Ascend: the device repeats the step itself
            loop_op, load_device_loop = device_loop
            loop_fetches = {**step_fetches, "device_loop": loop_op}
        else:
            stop_on_nan = config.nan_policy == "stop"

            def keep_going(i, *last):
                more = i < loop_steps
                return tf.logical_and(more, last[3]) if stop_on_nan else more

            def body(i, *_last):
                last_step = tf.logical_and(measure_grad_norm, tf.equal(i + 1, loop_steps))
                return (i + 1, *one_step(last_step)[0])

            zero = tf.constant(0.0)
            initial = [zero, zero, zero, tf.constant(True), tf.constant(0, tf.int64), zero]
            _, *last = tf.while_loop(
                keep_going,
                body,
                [tf.constant(0), *initial],
                parallel_iterations=1,
                name="sunk_steps",
            )
            loop_fetches = dict(zip(names, last))
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
    if config.mode == "train_and_evaluate":
        eval_every = max(1, round(config.epochs_between_evals * steps_per_epoch))
    return RunPlan(train_images, global_batch, steps_per_epoch, max_steps, save_every, eval_every)


def prepare_log_dir(config: Config, cleanup: contextlib.ExitStack) -> str | None:
    """Lock log_dir for this run, check it against the run, write config.json; returns the
    checkpoint to resume from.

    The lock is released when ``cleanup`` closes.  Never starts afresh over a run it cannot
    resume (another network's config.json, checkpoint files without a complete checkpoint):
    that is refused unless ``--overwrite``, which deletes the previous run first.  Leftovers of
    interrupted saves are deleted.
    """
    log_dir = config.log_dir
    lock = cleanup.enter_context(runlock.RunLock(log_dir))
    if lock.stale_owner:
        owner = lock.stale_owner
        print(f"note: took over {lock.path} from pid {owner.get('pid')}, which is not running")
    try:
        checkpoints.remove_partial(log_dir)
        if config.overwrite:
            _remove_previous_run(config)
        previous = read_run_config(log_dir)
        changed = [k for k in MODEL_KEYS if k in previous and previous[k] != getattr(config, k)]
        if changed:
            key = changed[0]
            raise UsageError(
                f"--log_dir {log_dir} holds a run with {key}={previous[key]}, this run has "
                f"{key}={getattr(config, key)} (use another --log_dir, or --overwrite to delete "
                "that run)"
            )
        latest = checkpoints.latest_checkpoint(log_dir)
        named = checkpoints.state_file_target(log_dir)
        if named and not os.path.exists(named + ".index"):
            if latest is None:
                raise UsageError(
                    f"{os.path.join(log_dir, 'checkpoint')} names {named}, which is missing, and "
                    "no other checkpoint is complete: put it back, or start afresh with --overwrite"
                )
            print(f"warning: {named} (the newest checkpoint on record) is missing; using {latest}")
        leftovers = glob.glob(os.path.join(glob.escape(log_dir), f"{checkpoints.PREFIX}-*"))
        if latest is None and leftovers:
            raise UsageError(
                f"--log_dir {log_dir} holds {os.path.basename(sorted(leftovers)[-1])} but no "
                "complete checkpoint (no .index file): start afresh with --overwrite"
            )
        if latest is None:  # else write_config, once the checkpoint has been restored
            write_config(config)
    except OSError as err:
        raise UsageError(f"--log_dir {log_dir}: cannot write there ({err.strerror})") from err
    return latest


def write_config(config: Config) -> None:
    """``<log_dir>/config.json``: the resolved settings (through a temporary name)."""
    path = os.path.join(config.log_dir, CONFIG_FILE)
    with open(path + ".tmp", "w") as f:
        f.write(config.to_json())
    os.replace(path + ".tmp", path)


def read_run_config(folder: str) -> dict:
    """The settings a run saved in ``<folder>/config.json`` ({} when there are none)."""
    return info.read_json(os.path.join(folder, CONFIG_FILE), "run settings")


def _remove_previous_run(config: Config) -> None:
    """--overwrite: delete the checkpoints, logs, metrics and events of the run in log_dir."""
    log_dir = glob.escape(config.log_dir)
    doomed = [
        *glob.glob(os.path.join(log_dir, f"{checkpoints.PREFIX}-*")),
        *glob.glob(os.path.join(log_dir, "events.out.tfevents.*")),
        *(
            os.path.join(config.log_dir, name)
            for name in ("checkpoint", CONFIG_FILE, METRICS_FILE, config.log_name)
        ),
    ]
    removed = 0
    for path in doomed:
        if os.path.isfile(path):
            os.remove(path)
            removed += 1
    if removed:
        print(f"--overwrite: deleted the previous run in {config.log_dir} ({removed} files)")


class StopSignals:
    """SIGINT/SIGTERM become a flag the loop checks after each session call.

    The first signal lets the current session call finish; the loop then saves a checkpoint
    and exits 130 or 143.  A second one exits at once, even in the middle of a long session
    call: Python runs signal handlers only between bytecodes of the main thread, which a session
    call blocks, so a helper thread reads the signals from a wakeup fd instead.  Exiting there
    cannot leave a half-written checkpoint that a reader would take (see checkpoints.py).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self) -> StopSignals:
        read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        for sig in self.SIGNALS:
            # The C-level handler writes to the wakeup fd only for signals with a Python handler.
            self._previous[sig] = signal.signal(sig, lambda *_: None)
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, args=(read_fd,), daemon=True)
        self._thread.start()
        return self

    def _watch(self, read_fd: int) -> None:
        with os.fdopen(read_fd, "rb", buffering=0) as pipe:
            while data := pipe.read(64):  # b"" once __exit__ closes the write end
                for signum in data:
                    if signum not in self.SIGNALS:
                        continue
                    if self.received is None:
                        self.received = signum
                    else:
                        name = signal.Signals(signum).name
                        print(f"{name} again: exiting at once, without saving", file=sys.stderr)
                        os._exit(_exit_code(signum))

    def __exit__(self, *exc) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        os.close(self._write_fd)
        self._thread.join()

    @property
    def exit_code(self) -> int:
        return _exit_code(self.received)


def _exit_code(signum: int) -> int:
    return EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM


def _train_split(config: Config):
    if config.synthetic and config.data_dir is None:
        return None
    return pipeline.load_split(config.data_dir, "train", config.tfds_data_dir)


def train(config: Config) -> int:
    """Run ``config.mode``; returns the process exit code."""
    if config.mode == "evaluate":
        from vgg_keras import evaluation

        return evaluation.evaluate_folder(config)
    # Closes whatever the run holds however it ends, e.g. releases the log_dir lock.
    with contextlib.ExitStack() as cleanup:
        return _train(config, cleanup)


def _train(config: Config, cleanup: contextlib.ExitStack) -> int:
    dist = distribute.create(config)  # first: it may configure devices and start a server
    split = _train_split(config)
    train_images = split.num_examples if split else IMAGENET_TRAIN_IMAGES
    plan = plan_run(config, train_images, dist.num_replicas)
    _check_device_loop(config, plan, dist)
    if dist.is_chief:
        resume_from = prepare_log_dir(config, cleanup)
    else:  # the chief prepares the log folder; the others only read its newest checkpoint
        resume_from = None if config.overwrite else checkpoints.latest_checkpoint(config.log_dir)
    start_step = checkpoints.checkpoint_step(resume_from) if resume_from else 0

    shards = []  # (num_workers, worker_index) the strategy asked this worker's input for

    def dataset_fn(num_workers: int, worker_index: int):
        shards.append((num_workers, worker_index))
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

    tg = build_train_graph(config, dataset_fn, plan.steps_per_epoch, plan.global_batch, dist)
    evaluator = None
    if plan.eval_every:
        from vgg_keras import evaluation

        evaluator = evaluation.Evaluator(config, plan.steps_per_epoch, dist=dist)

    session = dist.session(
        tg.graph,
        compat.session_config(config.intra_op_threads, config.inter_op_threads, config.xla),
    )
    reporter = Reporter(
        config.log_dir,
        config.log_name,
        is_chief=dist.is_chief,
        total_steps=plan.max_steps,
        initial_step=start_step,
        progress=config.progress,
    )
    try:
        if dist.kind != "none":
            reporter.print(dist.describe())
        if dist.model_precision(config.precision) == "bf16" and not compat.fast_bf16():
            reporter.print(
                "warning: --precision bf16 on a CPU without bf16 instructions (no avx512_bf16 or "
                "amx_bf16) and no GPU: it is emulated, many times slower than --precision fp32"
            )
        if split is not None and shards[0][0] > 1:
            reporter.print(_describe_shard(split, *shards[0]))
        session.run(tg.init_op)
        if resume_from:
            checkpoints.check_compatible(resume_from, tg.model.weights)
            checkpoints.restore(tg.saver, session, resume_from)
            if dist.is_chief:  # only now: a checkpoint that does not fit leaves it untouched
                write_config(config)
            # A new Saver knows only its own checkpoints: without this, --keep_checkpoint_max
            # would never delete the ones written before the resume.
            tg.saver.recover_last_checkpoints(checkpoints.list_checkpoints(config.log_dir))
            reporter.print(f"resumed from {resume_from} at step {start_step}")
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

            loaded = keras_weights.load(
                session,
                tg.model,
                keras_weights.path_of(config.weights),
                config.restore_exclude,
            )
            note = "" if config.preprocess == "caffe" else " (they expect --preprocess caffe)"
            reporter.print(f"initialised {len(loaded)} layers from {config.weights}{note}")
        if tg.broadcast_op is not None:
            session.run(tg.broadcast_op)
        if tg.load_device_loop is not None:
            tg.load_device_loop(session, config.iterations_per_loop)
        session.run(tg.iterator_init)
        with StopSignals() as signals:
            code = _loop(config, plan, tg, session, reporter, evaluator, signals, split)
        if code == 0 and dist.num_workers > 1:
            # Equal on every worker when they stayed in sync (bit-identical weights).
            reporter.print(f"weights fingerprint {_fingerprint(session.run(tg.model.weights))}")
        return code
    except (tf.errors.UnavailableError, tf.errors.CancelledError) as err:
        if dist.num_workers == 1:
            raise
        reporter.print(
            f"error: lost contact with another worker ({type(err).__name__}: it stopped, or its "
            "host is unreachable); restart every worker to resume from the newest checkpoint"
        )
        return 1
    finally:
        reporter.close()
        session.close()
        if evaluator:
            evaluator.close()


def _check_device_loop(config: Config, plan: RunPlan, dist: distribute.Distribution) -> None:
    """Ascend's device loop always runs --iterations_per_loop steps: the intervals must be
    multiples of it, or a checkpoint or an evaluation would be skipped."""
    n = config.iterations_per_loop
    if dist.kind != "npu" or n == 1:
        return
    intervals = {"steps": plan.max_steps, "save": plan.save_every, "eval": plan.eval_every}
    for name, every in intervals.items():
        if every and every % n:
            raise UsageError(
                f"--iterations_per_loop {n}: on Ascend the {name} interval ({every} steps) "
                "must be a multiple of it"
            )


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


def _logs_at(step: int, last_log_step: int, display_every: int, max_steps: int) -> bool:
    """Whether reaching ``step`` ends a log interval: a multiple of --display_every passed
    since the last line, or the end of the run."""
    return step // display_every > last_log_step // display_every or step >= max_steps


def _next_multiple(step: int, every: int | None) -> int:
    return (step // every + 1) * every if every else 1 << 62


def _loop(config, plan, tg, session, reporter, evaluator, signals, split) -> int:
    """Train to ``plan.max_steps``; returns the exit code.

    Every way out saves a checkpoint at the step reached (a signal, bad data, the end) except
    two: a non-finite loss or weights (that state is never saved, exit 3) and a checkpoint that
    cannot be written (RunError, exit 1).  Either way the newest checkpoint is the last good one.
    """
    step = int(session.run(tg.global_step))
    last_log_step, last_log_time = step, time.perf_counter()
    # The starting state is a checkpoint already, or the initialisation: nothing to save.
    last_saved = step
    prefix = os.path.join(config.log_dir, checkpoints.PREFIX)
    # Restored with the weights: the first message of a resumed run counts only its own steps.
    skipped_steps = int(session.run(tg.skipped_steps))
    bad_records = _count_bad_records(config, split, reporter)
    plateau = ChancePlateau(config.class_num)

    def newest() -> str:
        return checkpoints.latest_checkpoint(config.log_dir) or "none"

    def save(at: int) -> None:
        nonlocal last_saved
        if at == last_saved or not reporter.is_chief:  # only the chief writes checkpoints
            return
        # The loss check stops at the first bad step; this also catches an update that made
        # the weights overflow while its own loss was still finite.
        if not all(np.isfinite(w).all() for w in session.run(tg.model.trainable_weights)):
            raise _NonFinite(f"the weights are not finite at step {at}")
        try:
            with tg.graph.as_default():  # the v1 Saver works only in graph mode
                tg.saver.save(session, prefix, global_step=at, write_meta_graph=False)
        except (tf.errors.OpError, OSError) as err:
            checkpoints.remove_partial(config.log_dir)  # give back the space a failed save took
            raise RunError(
                f"cannot write checkpoint {prefix}-{at} ({_why(err)}); the newest checkpoint "
                f"is {newest()}"
            ) from err
        last_saved = at

    def evaluate(at: int) -> None:
        save(at)
        result = evaluator.evaluate(f"{prefix}-{at}")
        evaluator.report([result], reporter)

    try:
        while step < plan.max_steps:
            n = min(
                config.iterations_per_loop,
                plan.max_steps - step,
                # Calls end on log steps too, so lines fall on multiples of --display_every.
                _next_multiple(step, config.display_every) - step,
                _next_multiple(step, plan.save_every) - step,
                _next_multiple(step, plan.eval_every) - step,
            )
            fetches = tg.step_fetches if n == 1 else tg.loop_fetches
            feed = {} if n == 1 else {tg.loop_steps: n}
            if _logs_at(step + n, last_log_step, config.display_every, plan.max_steps):
                feed[tg.measure_grad_norm] = True
            try:
                out = session.run(fetches, feed_dict=feed)
            except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as err:
                explained = _explain_data_error(err, config, split)
                if not isinstance(explained, UsageError):
                    raise
                # The steps before the bad batch were applied: keep them.
                save(int(session.run(tg.global_step)))
                raise UsageError(f"{explained}; the newest checkpoint is {newest()}") from err
            except tf.errors.OutOfRangeError as err:
                raise UsageError(
                    f"{config.data_dir}: training data ran out at step {step}"
                ) from err
            step = int(out["step"])
            if not out["finite"] and config.nan_policy == "stop":
                raise _NonFinite(f"loss is {out['total_loss']} at step {step} (lr {out['lr']:.6g})")
            reporter.advance(step)
            if _logs_at(step, last_log_step, config.display_every, plan.max_steps):
                now = time.perf_counter()
                fps = (step - last_log_step) * plan.global_batch / max(now - last_log_time, 1e-9)
                extra = {}
                if config.nan_policy == "skip_step":
                    total = int(session.run(tg.skipped_steps))
                    if total > skipped_steps:
                        reporter.print(
                            f"skipped {total - skipped_steps} step(s) with a non-finite loss up "
                            f"to step {step} (lr {out['lr']:.6g}); {total} in this run's history"
                        )
                    skipped_steps = extra["skipped_steps"] = total
                if bad_records is not None:
                    extra["skipped_records"] = bad_records
                reporter.train_step(
                    step,
                    plan.epoch(step),
                    fps,
                    out["loss"],
                    out["total_loss"],
                    out["lr"],
                    grad_norm=out["grad_norm"],
                    **extra,
                )
                warning = plateau.observe(plan.epoch(step), float(out["loss"]))
                if warning:
                    reporter.print(warning)
                last_log_step, last_log_time = step, now
            if step % plan.save_every == 0:
                save(step)
            if plan.eval_every and step % plan.eval_every == 0 and step < plan.max_steps:
                evaluate(step)
                last_log_time = time.perf_counter()  # evaluation time is not training time
            if signals.received is not None:
                save(step)
                name = signal.Signals(signals.received).name
                reporter.print(
                    f"{name}: stopped at step {step}, saved {prefix}-{step} "
                    f"(exit {signals.exit_code})"
                )
                return signals.exit_code
        save(step)
        if evaluator is not None:
            evaluate(step)
    except _NonFinite as err:
        reporter.print(f"error: {err}; stopped without saving, the newest checkpoint is {newest()}")
        return EXIT_NONFINITE
    except OSError as err:  # the log, metrics or events could not be written
        raise RunError(
            f"cannot write to --log_dir {config.log_dir} ({_why(err)}); the newest checkpoint "
            f"is {newest()}"
        ) from err
    reporter.print(f"done: {step} steps, checkpoint {prefix}-{step}")
    return 0


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
        list(split.files), config.class_num, config.label_offset, parse=split.parse
    )
    reporter.print(f"--skip_corrupt: {count} unusable training record(s), skipped every epoch")
    return count


def _explain_data_error(err, config: Config, split) -> Exception:
    """Turn a TF error raised by the input pipeline into a one-line message naming the file."""
    if split is None:
        return err
    from vgg_keras.data import diagnose

    bad = diagnose.find_bad_record(
        list(split.files), config.class_num, config.label_offset, parse=split.parse
    )
    if bad is None:
        return err
    return UsageError(f"{bad} (use --skip_corrupt to skip bad records)")
