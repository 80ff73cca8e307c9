"""Test stand-in for ``npu_bridge.estimator.npu.npu_optimizer``: gradient averaging over ranks.

What the real ``NPUDistributedOptimizer(optimizer, is_weight_update_sharding=False, name=None)``
does, and this one too: with ``RANK_SIZE`` > 1 its ``compute_gradients`` all-reduces every
gradient over the ranks (HCCL, ``hccl_ops.allreduce``) and divides by the number of ranks;
``apply_gradients``, ``get_slot``, ``get_slot_names`` and ``variables`` are the wrapped
optimizer's.  With ``RANK_SIZE`` unset or 1 it changes nothing.  ``allreduce(tensor, average)``
is the module's helper.  Weight-update sharding (``is_weight_update_sharding=True``) is not
reproduced.
"""

from __future__ import annotations

import os

import tensorflow as tf

from npu_bridge.hccl import _transport, hccl_ops

v1 = tf.compat.v1


def allreduce(tensor, average=True):
    """``tensor`` summed over the ranks (divided by their number with ``average``); an
    IndexedSlices is gathered instead (its values and indices from every rank)."""
    size = _transport.rank_size()
    if isinstance(tensor, tf.IndexedSlices):
        values = hccl_ops.allgather(tensor.values, size)
        indices = hccl_ops.allgather(tensor.indices, size)
        if average:
            values = values / tf.cast(size, values.dtype)
        return tf.IndexedSlices(values, indices, dense_shape=tensor.dense_shape)
    summed = hccl_ops.allreduce(tensor, "sum")
    return summed / tf.cast(size, tensor.dtype) if average else summed


def _ranks() -> int:
    return int(os.getenv("RANK_SIZE") or 1)


class NPUDistributedOptimizer(v1.train.Optimizer):
    """``optimizer`` with its gradients averaged over the ranks."""

    def __init__(self, optimizer, is_weight_update_sharding=False, name=None):
        if is_weight_update_sharding:
            raise NotImplementedError("the npu_bridge test stand-in has no weight-update sharding")
        if name is None:
            name = f"Distributed{type(optimizer).__name__}"
        self._optimizer = optimizer
        self._is_weight_update_sharding = is_weight_update_sharding
        super().__init__(name=name, use_locking=False)

    def compute_gradients(self, *args, **kwargs):
        """The wrapped optimizer's gradients, averaged over the ranks."""
        gradients = self._optimizer.compute_gradients(*args, **kwargs)
        if _ranks() <= 1:
            return gradients
        with tf.name_scope(self._name + "_Allreduce"):
            return [(allreduce(g) if g is not None else None, v) for g, v in gradients]

    def apply_gradients(self, grads_and_vars, global_step=None, name=None):
        return self._optimizer.apply_gradients(grads_and_vars, global_step, name)

    def get_slot(self, *args, **kwargs):
        return self._optimizer.get_slot(*args, **kwargs)

    def get_slot_names(self, *args, **kwargs):
        return self._optimizer.get_slot_names(*args, **kwargs)

    def variables(self, *args, **kwargs):
        return self._optimizer.variables(*args, **kwargs)
