"""The training graph: input iterator -> Keras model -> loss -> Nesterov momentum -> train op,
the same step also wrapped in a ``tf.while_loop`` for loop sinking.

The loss is the reference's: the label-smoothed softmax cross-entropy plus ``weight_decay *
sum(tf.nn.l2_loss(v))`` over every trainable variable (``--decay_biases false``: kernels only).
Under a strategy every replica computes the gradients of its share of the global batch, the
strategy sums them over all replicas and every replica applies the same update.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable

from vgg_keras import bias_gradient, compat, distribute, schedules
from vgg_keras import model as model_lib
from vgg_keras.clock import Plan
from vgg_keras.compat import keras, tf, v1
from vgg_keras.config import Config, Optimizer


class StepOutputs(typing.NamedTuple):
    """What a training call returns: the values of its last step."""

    loss: typing.Any  # the label-smoothed cross-entropy of the batch (before the update)
    total_loss: typing.Any  # loss + weight decay
    lr: typing.Any  # the learning rate the update used
    finite: typing.Any  # whether total_loss was finite
    step: typing.Any  # global_step after the call
    grad_norm: typing.Any  # the gradient's global norm (NaN unless measured)
    top1: typing.Any  # the batch's training top-1


def cross_entropy(logits, labels, num_classes: int, label_smoothing: float):
    """Mean softmax cross-entropy in float32 against smoothed one-hot labels."""
    return v1.losses.softmax_cross_entropy(
        tf.one_hot(labels, num_classes, dtype=tf.float32),
        tf.cast(logits, tf.float32),
        label_smoothing=label_smoothing,
        loss_collection=None,
        reduction=v1.losses.Reduction.MEAN,
    )


def weight_decay_loss(model: keras.Model, optimizer: Optimizer):
    """``weight_decay * sum(l2_loss(w))``; ``tf.nn.l2_loss`` is half the sum of squares, the
    convention of TF-slim and the reference."""
    weights = model_lib.decayed_variables(model, optimizer.decay_biases)
    if not optimizer.weight_decay or not weights:
        return tf.constant(0.0)
    return optimizer.weight_decay * tf.add_n(
        [tf.nn.l2_loss(tf.cast(w, tf.float32)) for w in weights]
    )


@dataclasses.dataclass
class TrainGraph:
    graph: tf.Graph
    model: keras.Model
    global_step: tf.Variable
    init_op: tf.Operation
    iterator_init: tf.Operation
    step_fetches: dict  # one training step: StepOutputs' fields
    # ``loop_steps`` training steps in one tf.while_loop: the same fields (None when
    # --iterations_per_loop is 1: every call is one step).
    loop_fetches: dict | None
    loop_steps: tf.Tensor  # placeholder: how many steps the while loop runs
    measure_grad_norm: tf.Tensor  # placeholder: compute the call's last gradient norm
    stop_requested: tf.Tensor  # placeholder: this worker has had a stop signal
    skipped_steps: tf.Variable
    saver: v1.train.Saver
    # What a resume restores besides the model's weights: global_step (required), and the
    # rest (momentum slots, loss scale, skipped steps) where the checkpoint has them.
    state: list
    # Ascend only: gives every rank rank 0's weights (run after init/restore); sets the number
    # of steps its device loop runs per session call.
    broadcast_op: tf.Operation | None = None
    load_device_loop: Callable[[v1.Session, int], None] | None = None


@dataclasses.dataclass
class _StepBuilder:
    """Builds one training step: the next batch, forward and backward on every replica, the
    update.  Called once: for a plain step, or inside the while loop's body.  (The optimizer
    creates its momentum slots outside the loop either way, in ``init_scope``.)"""

    config: Config
    dist: distribute.Distribution
    model: keras.Model
    optimizer: v1.train.Optimizer
    global_step: tf.Variable
    skipped: tf.Variable
    next_batch: Callable
    learning_rate: Callable  # learning_rate(step tensor) -> the schedule at that step
    micro_batches: int  # the plan's: --accumulation_steps

    def forward_backward(self, images, labels, measure_grad_norm):
        """On one replica: [loss, total_loss, gradient norm, top-1] and the gradients of its
        share of the batch, accumulated over --accumulation_steps micro-batches of it."""
        k, d = self.micro_batches, self.dist
        # Dropout's masks derive from (seed, step, replica, micro-batch), the step read here,
        # inside the loop's body too: a resumed run draws those of an uninterrupted one.
        local = tf.distribute.get_replica_context().replica_id_in_sync_group % d.local_replicas
        stream = (d.worker_index * d.local_replicas + local) * k
        if k == 1:
            values, grads = self._micro_batch(images, labels, stream)
        else:
            values, grads = self._accumulate(images, labels, k, stream)
        # The norm of this replica's gradient of its mean loss, on steps that end a log interval
        # (NaN on the others: it costs a pass over every gradient).
        grad_norm = tf.cond(
            measure_grad_norm,
            lambda: tf.linalg.global_norm(grads) * d.in_sync,
            lambda: tf.constant(float("nan")),
        )
        loss, total_loss, top1 = tf.unstack(values)
        variables = self.model.trainable_weights
        return tf.stack([loss, total_loss, grad_norm, top1]), list(zip(grads, variables))

    def _micro_batch(self, images, labels, stream):
        """[loss, total_loss, top-1] of one batch and its gradients (zeros for a variable it
        does not reach); the gradients wait for batch norm's moving-statistics updates."""
        network, o = self.config.network, self.config.optimizer
        step = self.global_step.read_value()
        model_lib.set_dropout_seed(self.model, self.config.loop.seed, step, stream)
        with bias_gradient.summed_in_fp32():
            logits = self.model(images, training=True)
        loss = cross_entropy(logits, labels, network.class_num, o.label_smoothing)
        total_loss = loss + weight_decay_loss(self.model, o)
        # The strategy sums gradients over replicas: the sum of these is the gradient of the
        # mean loss over the global batch.
        pairs = self.optimizer.compute_gradients(
            total_loss / self.dist.in_sync, self.model.trainable_weights
        )
        with tf.control_dependencies(model_lib.update_ops(self.model, images)):
            grads = [tf.identity(g) if g is not None else tf.zeros_like(v) for g, v in pairs]
        hits = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels)
        top1 = tf.reduce_mean(tf.cast(hits, tf.float32))
        return tf.stack([loss, total_loss, top1]), grads

    def _accumulate(self, images, labels, k: int, stream):
        """The mean of ``_micro_batch`` over the ``k`` equal slices of the batch, one after
        another in a tf.while_loop: the gradient of the whole batch's mean loss, with one
        slice's activations in memory at a time."""
        images = tf.reshape(images, tf.concat([[k, -1], tf.shape(images)[1:]], 0))
        labels = tf.reshape(labels, [k, -1])

        def body(i, values, grads):
            more, more_grads = self._micro_batch(images[i], labels[i], stream + i)
            return i + 1, values + more / k, [g + m / k for g, m in zip(grads, more_grads)]

        zeros = [tf.zeros_like(v) for v in self.model.trainable_weights]
        _, values, grads = tf.while_loop(
            lambda i, *_: i < k,
            body,
            [tf.constant(0), tf.zeros([3]), zeros],
            parallel_iterations=1,
            name="accumulation",
        )
        return values, grads

    def apply_on_replica(self, grads, clip_by_norm=None):
        """The update, with the gradients scaled by ``clip_grad_norm / clip_by_norm`` when that
        is below 1 (NaN when the norm is not finite: the loss-scale optimizer then skips)."""
        if clip_by_norm is not None:
            clipped, _ = tf.clip_by_global_norm(
                [g for g, _ in grads], self.config.optimizer.clip_grad_norm, use_norm=clip_by_norm
            )
            grads = [(g, v) for g, (_, v) in zip(clipped, grads)]
        return self.optimizer.apply_gradients(grads)

    def __call__(self, measure_grad_norm) -> tuple[StepOutputs, tf.Operation]:
        """One update; returns (the StepOutputs after it, train op)."""
        dist, o = self.dist, self.config.optimizer
        images, labels = self.next_batch()
        values, grads = dist.run(self.forward_backward, images, labels, measure_grad_norm)
        loss, total_loss, grad_norm, top1 = tf.unstack(
            dist.reduce(distribute.ReduceOp.MEAN, values)
        )
        # The mean over replicas is finite only if every replica's loss is, and every worker
        # sees the same value: all replicas take the same branch below.
        finite = tf.math.is_finite(total_loss)
        clip_by_norm = None
        if o.clip_grad_norm > 0:
            # Clipped by the norm of the global batch's gradient (the sum of the replicas'
            # shares: one more all-reduce on several replicas), so that N replicas still take
            # the steps of one device.  It is also the norm logged, before clipping.
            summed = dist.sum_over_replicas([g for g, _ in grads])
            clip_by_norm = tf.linalg.global_norm(summed)
            grad_norm = clip_by_norm

        def apply():
            return dist.group(dist.run(self.apply_on_replica, grads, clip_by_norm))

        def skip():
            return tf.group(v1.assign_add(self.skipped, 1))

        update = tf.cond(finite, apply, skip) if o.nan_policy == "skip_step" else apply()
        with tf.control_dependencies([update]):
            # Every step counts, applied or skipped (by --nan_policy skip_step, or by fp16's
            # loss scaling, which the optimizer would not count): the step number is the
            # number of batches taken, so a resume takes the next batch, and Ascend's device
            # loop, which always runs --iterations_per_loop steps, ends where the plan says.
            train_op = tf.group(v1.assign_add(self.global_step, 1))
        with tf.control_dependencies([train_op]):
            # Read after the update: the step this call ended on.  The update used the
            # learning rate of the step before it.
            step = self.global_step.read_value()
            lr = self.learning_rate(step - 1)
            outputs = StepOutputs(
                tf.identity(loss), tf.identity(total_loss), lr, finite, step, grad_norm, top1
            )
        return outputs, train_op


def build(config: Config, dataset_fn, plan: Plan, dist: distribute.Distribution) -> TrainGraph:
    """Build the training graph of ``plan`` (its batch layout, its resolved precision);
    ``dataset_fn(num_workers, worker_index)`` returns this worker's tf.data.Dataset of
    per-replica batches."""
    graph = tf.Graph()
    with graph.as_default(), dist.scope():
        v1.set_random_seed(config.loop.seed)
        with compat.precision_policy(plan.precision):
            model = model_lib.build(config.network, training=True, seed=config.loop.seed)
        global_step = v1.train.get_or_create_global_step()
        skipped = v1.Variable(0, dtype=tf.int64, trainable=False, name="skipped_steps")
        iterator_init, next_batch = dist.input_iterator(dataset_fn)
        o = config.optimizer

        def learning_rate(step):  # built where each step is built, reading that step's value
            return schedules.learning_rate(step, o, plan.steps_per_epoch, plan.global_batch)

        momentum = v1.train.MomentumOptimizer(
            lambda: learning_rate(global_step), o.momentum, use_nesterov=o.use_nesterov
        )
        # --precision itself: on Ascend the graph stays float32 while the device mixes.
        optimizer = dist.wrap_optimizer(momentum, config.network.precision)
        one_step = _StepBuilder(
            config, dist, model, optimizer, global_step, skipped, next_batch, learning_rate,
            plan.micro_batches,
        )  # fmt: skip
        measure_grad_norm = v1.placeholder_with_default(False, [], "measure_grad_norm")
        loop_steps = v1.placeholder_with_default(tf.constant(1, tf.int32), [], "loop_steps")
        # One copy of the step: a plain step where every call is one step, or Ascend's device
        # repeats it; else the sunk loop's body, and a single step is a loop of one.
        load_device_loop, loop_fetches = None, None
        if dist.sinks_its_own_loop or plan.call_steps == 1:
            step_outputs, step_op = one_step(measure_grad_norm)
            step_fetches = step_outputs._asdict()
            if dist.sinks_its_own_loop:
                loop_op, load_device_loop = dist.device_loop(step_op)
                loop_fetches = {**step_fetches, "device_loop": loop_op}
        else:
            loop_fetches = _sunk_steps(one_step, loop_steps, measure_grad_norm, o.nan_policy)
            step_fetches = loop_fetches
        stop_requested = v1.placeholder_with_default(False, [], "stop_requested")
        if dist.num_workers > 1:
            # Whether any worker had a signal before this call.  A signal reaches the workers
            # at different calls: they stop together after the same one (one scalar all-reduce
            # per call).
            votes = dist.run(lambda: tf.cast(stop_requested, tf.float32))
            anyone = dist.reduce(distribute.ReduceOp.SUM, votes) > 0
            step_fetches, loop_fetches = (
                f and {**f, "stop": anyone} for f in (step_fetches, loop_fetches)
            )
        broadcast_op = dist.broadcast(model.weights)
        # Rotation is the run folder's (rundir.remove_oldest): it keeps the best checkpoint.
        saver = v1.train.Saver(max_to_keep=None, save_relative_paths=True, pad_step_number=False)
        weights = {id(w) for w in model.weights}
        state = [v for v in v1.global_variables() if id(v) not in weights]
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
        stop_requested,
        skipped,
        saver,
        state,
        broadcast_op,
        load_device_loop,
    )


def _sunk_steps(one_step: _StepBuilder, loop_steps, measure_grad_norm, nan_policy: str) -> dict:
    """``loop_steps`` training steps in one tf.while_loop (loop sinking); the fetches of the
    last step run (the gradient norm, when asked for, of the last step only).  With --nan_policy
    stop the loop ends at the first non-finite loss."""

    def keep_going(i, last: StepOutputs):
        more = i < loop_steps
        return tf.logical_and(more, last.finite) if nan_policy == "stop" else more

    def body(i, _last):
        last_step = tf.logical_and(measure_grad_norm, tf.equal(i + 1, loop_steps))
        return i + 1, one_step(last_step)[0]

    zero = tf.constant(0.0)
    initial = StepOutputs(zero, zero, zero, tf.constant(True), tf.constant(0, tf.int64), zero, zero)
    _, last = tf.while_loop(
        keep_going, body, [tf.constant(0), initial], parallel_iterations=1, name="sunk_steps"
    )
    return last._asdict()
