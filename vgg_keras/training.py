"""The training graph and the explicit ``tf.compat.v1.Session`` loop.

Read top to bottom: resolve the data and the log folder, build one graph (input iterator ->
Keras model -> loss -> Nesterov momentum -> train op; the same step also wrapped in a
``tf.while_loop`` for loop sinking), then run it, logging, checkpointing and evaluating on the
way.  A run whose log folder holds a checkpoint resumes from it: weights, momentum, global_step
and the position in the input stream.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time

from vgg_keras import checkpoints, compat, schedules
from vgg_keras.compat import keras, tf, v1
from vgg_keras.config import Config
from vgg_keras.data import pipeline
from vgg_keras.errors import EXIT_SIGINT, EXIT_SIGTERM, UsageError
from vgg_keras.model import build_vgg
from vgg_keras.reporting import Reporter

IMAGENET_TRAIN_IMAGES = 1_281_167  # epoch length for --synthetic without a dataset
CONFIG_FILE = "config.json"
# Settings that define the network: a checkpoint only fits a run that agrees on all of them.
MODEL_KEYS = ("arch", "class_num", "image_size", "width_multiplier")


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
    skipped_steps: tf.Variable
    saver: v1.train.Saver


def build_train_graph(
    config: Config, dataset_fn, steps_per_epoch: float, global_batch: int
) -> TrainGraph:
    """Build the training graph; ``dataset_fn()`` returns the tf.data.Dataset of batches."""
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(config.seed)
        compat.set_precision_policy(config.precision)
        model = build_vgg(
            config.arch,
            config.class_num,
            config.image_size,
            config.width_multiplier,
            config.dropout,
            config.dense_init,
        )
        global_step = v1.train.get_or_create_global_step()
        skipped = v1.Variable(0, dtype=tf.int64, trainable=False, name="skipped_steps")
        iterator = v1.data.make_initializable_iterator(dataset_fn())
        # The optimizer is created once (its momentum slots must be shared by the single step
        # and the loop body); its learning rate is the schedule tensor of the step being built.
        step_lr = []
        optimizer = v1.train.MomentumOptimizer(
            lambda: step_lr[-1], config.momentum, use_nesterov=config.use_nesterov
        )
        if config.precision == "fp16":
            optimizer = v1.mixed_precision.MixedPrecisionLossScaleOptimizer(optimizer, "dynamic")

        def one_step():
            """One update; returns (loss, total_loss, lr, finite) after it."""
            images, labels = iterator.get_next()
            lr = schedules.learning_rate(global_step, config, steps_per_epoch, global_batch)
            step_lr.append(lr)
            logits = model(images, training=True)
            loss = cross_entropy(logits, labels, config.class_num, config.label_smoothing)
            total_loss = loss + weight_decay_loss(model, config.weight_decay, config.decay_biases)
            finite = tf.math.is_finite(total_loss)
            grads = optimizer.compute_gradients(total_loss, model.trainable_weights)
            with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):

                def apply():
                    return tf.group(optimizer.apply_gradients(grads, global_step))

                if config.nan_policy == "skip_step":

                    def skip():
                        return tf.group(v1.assign_add(global_step, 1), v1.assign_add(skipped, 1))

                    train_op = tf.cond(finite, apply, skip)
                else:
                    train_op = apply()
            with tf.control_dependencies([train_op]):
                # Read after the update: the step this call ended on.
                step = global_step.read_value()
                return tf.identity(loss), tf.identity(total_loss), lr, finite, step

        # The single step is built first so that the optimizer's slot variables are created
        # outside the while loop; the loop body then reuses them.
        names = ("loss", "total_loss", "lr", "finite", "step")
        step_fetches = dict(zip(names, one_step()))

        loop_steps = v1.placeholder_with_default(tf.constant(1, tf.int32), [], "loop_steps")
        stop_on_nan = config.nan_policy == "stop"

        def keep_going(i, *last):
            more = i < loop_steps
            return tf.logical_and(more, last[3]) if stop_on_nan else more

        def body(i, *_last):
            return (i + 1, *one_step())

        zero = tf.constant(0.0)
        initial = [zero, zero, zero, tf.constant(True), tf.constant(0, tf.int64)]
        _, *last = tf.while_loop(
            keep_going,
            body,
            [tf.constant(0), *initial],
            parallel_iterations=1,
            name="sunk_steps",
        )
        loop_fetches = dict(zip(names, last))
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
        iterator.initializer,
        step_fetches,
        loop_fetches,
        loop_steps,
        skipped,
        saver,
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


def prepare_log_dir(config: Config) -> str | None:
    """Create log_dir, refuse to mix runs, write config.json; returns the checkpoint to resume."""
    os.makedirs(config.log_dir, exist_ok=True)
    latest = checkpoints.latest_checkpoint(config.log_dir)
    path = os.path.join(config.log_dir, CONFIG_FILE)
    if latest and os.path.exists(path) and not config.overwrite:
        with open(path) as f:
            previous = json.load(f)
        changed = [k for k in MODEL_KEYS if previous.get(k) != getattr(config, k)]
        if changed:
            key = changed[0]
            raise UsageError(
                f"--log_dir {config.log_dir} holds a run with {key}={previous.get(key)}, "
                f"this run has {key}={getattr(config, key)} (use another --log_dir or --overwrite)"
            )
    with open(path + ".tmp", "w") as f:
        f.write(config.to_json())
    os.replace(path + ".tmp", path)
    return latest


class StopSignals:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each session call.

    The first signal lets the current call finish and a checkpoint be written; a second one
    restores the default handler's behaviour and exits at once.
    """

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame):
        if self.received is not None:
            os._exit(EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM)
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def exit_code(self) -> int:
        return EXIT_SIGINT if self.received == signal.SIGINT else EXIT_SIGTERM


def _train_split(config: Config):
    if config.synthetic and config.data_dir is None:
        return None
    return pipeline.load_split(config.data_dir, "train", config.tfds_data_dir)


def train(config: Config) -> int:
    """Run ``config.mode``; returns the process exit code."""
    if config.mode == "evaluate":
        from vgg_keras import evaluation

        return evaluation.evaluate_folder(config)

    split = _train_split(config)
    train_images = split.num_examples if split else IMAGENET_TRAIN_IMAGES
    plan = plan_run(config, train_images)
    resume_from = prepare_log_dir(config)
    start_step = checkpoints.checkpoint_step(resume_from) if resume_from else 0

    def dataset_fn():
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
            start_step=start_step,
            label_offset=config.label_offset,
            shuffle_buffer=config.shuffle_buffer,
            min_object_covered=config.min_object_covered,
            area_range=config.area_range,
            aspect_ratio_range=config.aspect_ratio_range,
            skip_corrupt=config.skip_corrupt,
        )

    tg = build_train_graph(config, dataset_fn, plan.steps_per_epoch, plan.global_batch)
    evaluator = None
    if plan.eval_every:
        from vgg_keras import evaluation

        evaluator = evaluation.Evaluator(config)

    session = v1.Session(
        graph=tg.graph,
        config=compat.session_config(config.intra_op_threads, config.inter_op_threads, config.xla),
    )
    reporter = Reporter(
        config.log_dir,
        config.log_name,
        total_steps=plan.max_steps,
        initial_step=start_step,
        progress=config.progress,
    )
    try:
        session.run(tg.init_op)
        if resume_from:
            checkpoints.check_compatible(resume_from, tg.model.weights)
            with tg.graph.as_default():  # the v1 Saver works only in graph mode
                tg.saver.restore(session, resume_from)
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
        session.run(tg.iterator_init)
        with StopSignals() as signals:
            return _loop(config, plan, tg, session, reporter, evaluator, signals, split)
    finally:
        reporter.close()
        session.close()
        if evaluator:
            evaluator.close()


def _next_multiple(step: int, every: int | None) -> int:
    return (step // every + 1) * every if every else 1 << 62


def _loop(config, plan, tg, session, reporter, evaluator, signals, split) -> int:
    step = int(session.run(tg.global_step))
    last_log_step, last_log_time = step, time.perf_counter()
    last_saved = step if checkpoints.latest_checkpoint(config.log_dir) else -1
    prefix = os.path.join(config.log_dir, checkpoints.PREFIX)

    def save(at: int) -> None:
        nonlocal last_saved
        if at != last_saved:
            with tg.graph.as_default():  # the v1 Saver works only in graph mode
                tg.saver.save(session, prefix, global_step=at, write_meta_graph=False)
            last_saved = at

    def evaluate(at: int) -> None:
        save(at)
        result = evaluator.evaluate(f"{prefix}-{at}")
        evaluator.report([result], reporter)

    while step < plan.max_steps:
        n = min(
            config.iterations_per_loop,
            plan.max_steps - step,
            _next_multiple(step, plan.save_every) - step,
            _next_multiple(step, plan.eval_every) - step,
        )
        fetches = tg.step_fetches if n == 1 else tg.loop_fetches
        feed = None if n == 1 else {tg.loop_steps: n}
        try:
            out = session.run(fetches, feed_dict=feed)
        except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as err:
            raise _explain_data_error(err, config, split) from err
        except tf.errors.OutOfRangeError as err:
            raise UsageError(f"{config.data_dir}: training data ran out at step {step}") from err
        step = int(out["step"])
        if not out["finite"]:
            reporter.print(
                f"error: loss is {out['total_loss']} at step {step} (lr {out['lr']:.6g}); "
                f"stopped, the newest checkpoint is {checkpoints.latest_checkpoint(config.log_dir)}"
            )
            return 1
        reporter.advance(step)
        crossed = step // config.display_every > last_log_step // config.display_every
        if crossed or step >= plan.max_steps:
            now = time.perf_counter()
            fps = (step - last_log_step) * plan.global_batch / max(now - last_log_time, 1e-9)
            extra = {}
            if config.nan_policy == "skip_step":
                extra["skipped_steps"] = int(session.run(tg.skipped_steps))
            reporter.train_step(
                step, plan.epoch(step), fps, out["loss"], out["total_loss"], out["lr"], **extra
            )
            last_log_step, last_log_time = step, now
        if step % plan.save_every == 0:
            save(step)
        if plan.eval_every and step % plan.eval_every == 0 and step < plan.max_steps:
            evaluate(step)
            last_log_time = time.perf_counter()  # evaluation time is not training time
        if signals.received is not None:
            save(step)
            name = "SIGINT" if signals.received == signal.SIGINT else "SIGTERM"
            reporter.print(f"{name}: saved {prefix}-{step}, stopping")
            return signals.exit_code
    save(step)
    if evaluator is not None:
        evaluate(step)
    reporter.print(f"done: {step} steps, checkpoint {prefix}-{step}")
    return 0


def _explain_data_error(err, config: Config, split) -> Exception:
    """Turn a TF error raised by the input pipeline into a one-line message naming the file."""
    if split is None:
        return err
    from vgg_keras.data import diagnose

    bad = diagnose.find_bad_record(list(split.files), config.class_num, config.label_offset)
    if bad is None:
        return err
    return UsageError(f"{bad} (use --skip_corrupt to skip bad records)")
