"""Test stand-in for ``npu_bridge.estimator.npu.npu_loss_scale_optimizer``.

What the real ``NPULossScaleOptimizer(opt, loss_scale_manager, is_distributed=False)`` does, and
this one too: ``compute_gradients`` multiplies the loss by the manager's scale, calls ``opt``'s
``compute_gradients`` and divides the gradients by the scale; ``apply_gradients`` applies them
through ``opt`` only when no gradient overflowed (``global_step`` then does not advance either),
and lets the manager update the scale.  With ``is_distributed`` the overflow status is summed
over the ranks (an HCCL all-reduce), so that every rank skips together.

The device reports overflow through its float status registers (NpuAllocFloatStatus /
NpuGetFloatStatus / NpuClearFloatStatus), set by any saturating fp16 operation.  The CPU has no
such register and computes in float32: the stand-in's status is the number of non-finite
values among the gradients, which is how an overflow shows there.  With
``NPU_STANDIN_FP16_OVERFLOW=1`` it also counts the scaled gradients past float16's largest value
(65504), which the device's float16 arithmetic would have saturated: as on the NPU, the first
steps at the initial scale of 2^32 then overflow and are skipped until the scale has come down.
"""

from __future__ import annotations

import os

import tensorflow as tf

from npu_bridge.hccl import hccl_ops

v1 = tf.compat.v1


class NPULossScaleOptimizer(v1.train.Optimizer):
    """Loss scaling around ``opt``, skipping the update of a step that overflowed."""

    def __init__(self, opt, loss_scale_manager, is_distributed=False):
        self._opt = opt
        self._loss_scale_manager = loss_scale_manager
        self._is_distributed = is_distributed
        self._name = f"NPULossScaleOptimizer{type(opt).__name__}"
        super().__init__(name=self._name, use_locking=False)

    def compute_gradients(
        self,
        loss,
        var_list=None,
        gate_gradients=v1.train.Optimizer.GATE_OP,
        aggregation_method=None,
        colocate_gradients_with_ops=False,
        grad_loss=None,
    ):
        """Gradients of ``loss`` times the scale, divided by the scale."""
        loss_scale = self._loss_scale_manager.get_loss_scale()
        value = loss() if callable(loss) else loss
        scaled = value * tf.cast(loss_scale, value.dtype.base_dtype)
        pairs = self._opt.compute_gradients(
            scaled,
            var_list=var_list,
            gate_gradients=gate_gradients,
            aggregation_method=aggregation_method,
            colocate_gradients_with_ops=colocate_gradients_with_ops,
            grad_loss=grad_loss,
        )
        inverse = tf.math.reciprocal(loss_scale)
        return [
            (g * tf.cast(inverse, g.dtype.base_dtype) if g is not None else None, v)
            for g, v in pairs
        ]

    def _float_status(self, grads):
        """[number of non-finite gradient values]: the stand-in's overflow register."""
        counts = [
            tf.reduce_sum(tf.cast(tf.logical_not(tf.math.is_finite(g)), tf.float32)) for g in grads
        ]
        if os.environ.get("NPU_STANDIN_FP16_OVERFLOW") == "1":
            scale = self._loss_scale_manager.get_loss_scale()
            counts += [
                tf.reduce_sum(tf.cast(tf.abs(g) * tf.cast(scale, g.dtype) > 65504.0, tf.float32))
                for g in grads
            ]
        return tf.reshape(tf.add_n(counts) if counts else tf.constant(0.0), [1])

    def apply_gradients(self, grads_and_vars, global_step=None, name=None):
        """``opt.apply_gradients`` when no gradient overflowed; the scale's update."""
        grads_and_vars = list(grads_and_vars)
        status = self._float_status([g for g, _ in grads_and_vars if g is not None])
        if self._is_distributed:
            status = hccl_ops.allreduce([status], "sum", fusion=0)
        finite = tf.reduce_all(tf.equal(status, 0.0))

        def apply():
            return self._opt.apply_gradients(grads_and_vars, global_step, name)

        update = tf.cond(finite, apply, tf.no_op)
        return tf.group(update, self._loss_scale_manager.update_loss_scale(finite))
