"""Test stand-in for ``npu_bridge.estimator.npu.npu_loss_scale_manager``: loss scale managers.

The real module is plain TensorFlow (no device ops), and so is this one; it reproduces the
documented behaviour: ``FixedLossScaleManager`` keeps its scale; ``ExponentialUpdateLossScaleManager``
keeps the scale in a float32 variable ``loss_scale`` and counts ``good_steps`` and ``bad_steps``
(int32 variables).  After ``incr_every_n_steps`` consecutive finite steps the scale is multiplied
by ``incr_ratio`` (unless that would pass the float32 range); after ``decr_every_n_nan_or_inf``
steps with non-finite gradients, consecutive or not, it is multiplied by ``decr_ratio`` (but not
below 1).  A change of the scale resets both counts; a bad step resets the good count.
"""

from __future__ import annotations

import tensorflow as tf

v1 = tf.compat.v1
_FLOAT32_MAX = 3.4e38


class LossScaleManager:
    """What NPULossScaleOptimizer asks of a manager."""

    def get_loss_scale(self):
        """The loss scale: a scalar float32 tensor."""
        raise NotImplementedError

    def update_loss_scale(self, finite_grads):
        """An op that updates the scale after a step; ``finite_grads``: a bool tensor."""
        raise NotImplementedError


class FixedLossScaleManager(LossScaleManager):
    """One loss scale for the whole run."""

    def __init__(self, loss_scale):
        if loss_scale < 1:
            raise ValueError("loss scale must be at least 1.")
        self._loss_scale = tf.convert_to_tensor(loss_scale, dtype=tf.float32)

    def get_loss_scale(self):
        return self._loss_scale

    def update_loss_scale(self, finite_grads):
        return tf.no_op()


class ExponentialUpdateLossScaleManager(LossScaleManager):
    """A scale that grows after runs of finite steps and shrinks after non-finite ones."""

    def __init__(
        self,
        init_loss_scale,
        incr_every_n_steps,
        decr_every_n_nan_or_inf=2,
        incr_ratio=2,
        decr_ratio=0.8,
    ):
        self._incr_every_n_steps = incr_every_n_steps
        self._decr_every_n_nan_or_inf = decr_every_n_nan_or_inf
        self._incr_ratio = incr_ratio
        self._decr_ratio = decr_ratio
        self._loss_scale = v1.Variable(
            float(init_loss_scale), name="loss_scale", dtype=tf.float32, trainable=False
        )
        self._num_good_steps = v1.Variable(0, name="good_steps", dtype=tf.int32, trainable=False)
        self._num_bad_steps = v1.Variable(0, name="bad_steps", dtype=tf.int32, trainable=False)

    def get_loss_scale(self):
        return self._loss_scale

    def _set_scale(self, value):
        return tf.group(
            v1.assign(self._loss_scale, value),
            v1.assign(self._num_good_steps, 0),
            v1.assign(self._num_bad_steps, 0),
        )

    def update_loss_scale(self, finite_grads):
        def after_finite():
            def grow():
                limit = _FLOAT32_MAX / self._incr_ratio
                scale = self._loss_scale
                grown = tf.where(scale < limit, scale * self._incr_ratio, scale)
                return self._set_scale(grown)

            return tf.cond(
                self._num_good_steps + 1 >= self._incr_every_n_steps,
                grow,
                lambda: v1.assign_add(self._num_good_steps, 1).op,
            )

        def after_overflow():
            def shrink():
                return self._set_scale(tf.maximum(1.0, self._loss_scale * self._decr_ratio))

            def count():
                return tf.group(
                    v1.assign_add(self._num_bad_steps, 1), v1.assign(self._num_good_steps, 0)
                )

            return tf.cond(self._num_bad_steps + 1 >= self._decr_every_n_nan_or_inf, shrink, count)

        return tf.cond(finite_grads, after_finite, after_overflow)
