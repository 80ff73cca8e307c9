"""The Ascend adapter: the only module that imports ``npu_bridge`` (Huawei's CANN TensorFlow adapter).

On Ascend the session's graph is handed to the NPU runtime by the session config's custom
graph optimizer ``NpuOptimizer``.  Data-parallel training runs one process per device
(``RANK_ID`` / ``RANK_SIZE`` / ``RANK_TABLE_FILE``, as the reference's launch scripts set them);
gradients are all-reduced over HCCL by ``NPUDistributedOptimizer`` and the initial weights are
broadcast from rank 0.  Loop sinking uses npu_bridge's iteration variables: one ``Session.run``
of the returned op runs ``iterations_per_loop`` steps on the device.

``session_config`` is plain protobuf and works without ``npu_bridge``; everything else imports
it when called, so this module can be imported anywhere.
"""

from __future__ import annotations

from collections.abc import Callable

from vgg_keras.compat import tf, v1

# --precision -> the NPU's precision_mode.  fp32 keeps the CANN default (allow_fp32_to_fp16:
# the cube units of Ascend 910 have no fp32 matmul); the graph itself always stays float32.
PRECISION_MODES = {"fp16": "allow_mix_precision", "bf16": "allow_mix_precision_bf16"}


def session_config(
    base: v1.ConfigProto, *, precision: str = "fp32", iterations_per_loop: int = 1
) -> v1.ConfigProto:
    """``base`` plus the NpuOptimizer settings that run the graph on the Ascend device."""
    config = v1.ConfigProto()
    config.CopyFrom(base)
    custom = config.graph_options.rewrite_options.custom_optimizers.add()
    custom.name = "NpuOptimizer"
    params = custom.parameter_map
    params["use_off_line"].b = True  # execute on the device, not in the host simulator
    params["mix_compile_mode"].b = False  # whole graph on the device: required for loop sinking
    # The iterator's GetNext runs on the device too ("data pre-processing sinking"): Huawei's
    # sess.run guide makes it a precondition of loop sinking, and the reference sets it.
    params["enable_data_pre_proc"].b = True
    # Above 1 it switches loop sinking on; the device then repeats the step as often as
    # IterationPerLoop.load_iteration_per_loop_var says, which training gives this same value.
    params["iterations_per_loop"].i = iterations_per_loop
    params["hcom_parallel"].b = True  # all-reduce overlaps the backward pass
    if precision in PRECISION_MODES:
        params["precision_mode"].s = PRECISION_MODES[precision].encode()
    rewrite = config.graph_options.rewrite_options
    # TensorFlow's fused ops (remapping) have no NPU kernels, and its memory rewrite swaps
    # tensors to the host behind the NPU runtime's back.
    rewrite.remapping = rewrite.OFF
    rewrite.memory_optimization = rewrite.OFF
    return config


def wrap_optimizer(optimizer, precision: str, rank_size: int):
    """HCCL gradient averaging across ranks, and the NPU's own loss scaling for fp16.

    TensorFlow's overflow check (is_finite on the gradients) does not see the NPU's saturating
    fp16 arithmetic; NPULossScaleOptimizer reads the device's overflow status instead.
    """
    from npu_bridge.estimator.npu.npu_optimizer import NPUDistributedOptimizer

    if rank_size > 1:
        optimizer = NPUDistributedOptimizer(optimizer)
    if precision == "fp16":
        from npu_bridge.estimator.npu.npu_loss_scale_manager import (
            ExponentialUpdateLossScaleManager,
        )
        from npu_bridge.estimator.npu.npu_loss_scale_optimizer import NPULossScaleOptimizer

        manager = ExponentialUpdateLossScaleManager(
            init_loss_scale=2**32,
            incr_every_n_steps=1000,
            decr_every_n_nan_or_inf=2,
            decr_ratio=0.5,
        )
        optimizer = NPULossScaleOptimizer(optimizer, manager, is_distributed=rank_size > 1)
    return optimizer


def all_reduce_sum(value: tf.Tensor) -> tf.Tensor:
    """``value`` summed over every rank (an HCCL all-reduce, as a vector: ``value`` may be a
    scalar)."""
    from npu_bridge.hccl import hccl_ops

    summed = hccl_ops.allreduce(tf.reshape(value, [-1]), "sum")
    return tf.reshape(summed, tf.shape(value))


def broadcast_variables(variables) -> tf.Operation:
    """Copy rank 0's values of ``variables`` to every rank (run after init or restore)."""
    from npu_bridge.hccl import hccl_ops

    return tf.group(
        [v1.assign(var, hccl_ops.broadcast(tensor=[var], root_rank=0)[0]) for var in variables]
    )


def device_loop(train_op: tf.Operation) -> tuple[tf.Operation, Callable[[v1.Session, int], None]]:
    """(op that runs ``n`` steps per Session.run, load(session, n) to set ``n``).

    The graph is finalized before the session exists, so npu_bridge's two-part API is used:
    the loop variables are created now, their values loaded once the session is up.
    """
    from npu_bridge.estimator.npu import util

    looper = util.IterationPerLoop()
    op = looper.create_iteration_per_loop_var(train_op)

    def load(session: v1.Session, iterations_per_loop: int) -> None:
        # Variable.load assigns eagerly when eager execution is on (as it is here, outside
        # any graph): inside the session's graph it runs the initializer in the session.
        with session.graph.as_default():
            looper.load_iteration_per_loop_var(session, iterations_per_loop)

    return op, load
