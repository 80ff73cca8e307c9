"""Learning rates as graph ops of global_step: piecewise constant, cosine per step, or cosine
constant within each epoch; with linear warmup.

Boundaries, T_max and warmup are given in epochs of ``steps_per_epoch`` (the training images
// the global batch, the reference's arithmetic), so another batch size keeps the same epochs.
At batch 256 on ImageNet's 1,281,167 images the defaults are the reference's per-step table
exactly: the seed's piecewise 0.01 -> 1e-3 -> 1e-4 -> 1e-5 at steps 330,000, 520,000 and
625,001, and ``cosine_epoch`` the VGG16 copy's ``0.005 (1 + cos(pi floor(step / 5004) / 150))``.
Values are computed in float64 and rounded to float32 once, as the reference's numpy table is.
Every schedule is defined for every step, also past the planned end (piecewise keeps its last
value, cosine stays at ``eta_min``), and for a tensor of steps of any shape.
"""

from __future__ import annotations

import math

from vgg_keras.compat import tf
from vgg_keras.config import Optimizer


def learning_rate(step, optimizer: Optimizer, steps_per_epoch: int, global_batch: int):
    """float32 learning rate at ``step`` (an int64 tensor)."""
    o = optimizer
    # The linear-scaling rule, ``lr = base_lr * global_batch / 256``, when --scale_lr is set.
    scale = global_batch / 256.0 if o.scale_lr else 1.0
    step = tf.cast(step, tf.int64)
    if o.lr_schedule == "piecewise":
        boundaries = o.boundary_steps(steps_per_epoch)
        values = tf.constant([v * scale for v in o.piecewise_values], tf.float64)
        passed = tf.cast(tf.expand_dims(step, -1) >= tf.constant(boundaries, tf.int64), tf.int32)
        lr = tf.gather(values, tf.reduce_sum(passed, axis=-1))
    elif o.lr_schedule == "cosine_epoch":
        epoch = tf.minimum(step // max(steps_per_epoch, 1), math.ceil(o.T_max))
        lr = tf.gather(_cosine_table(o, scale), epoch)
    else:
        t_max = max(o.T_max * steps_per_epoch, 1.0)
        progress = tf.minimum(tf.cast(step, tf.float64), t_max) / t_max
        lr = o.eta_min + (o.lr * scale - o.eta_min) * 0.5 * (1.0 + tf.cos(math.pi * progress))
    warmup_steps = int(o.warmup_epochs * steps_per_epoch)
    if warmup_steps > 0:
        ramp = (o.lr * scale / warmup_steps) * tf.cast(step + 1, tf.float64)
        lr = tf.where(step < warmup_steps, ramp, lr)
    return tf.identity(tf.cast(lr, tf.float32), name="learning_rate")


def unreached(o: Optimizer, steps_per_epoch: int, max_steps: int) -> str | None:
    """The first change of the rate a run of ``max_steps`` never gets to (its last update runs
    at the rate of step ``max_steps - 1``), for a warning; None when it gets to every one."""
    if o.lr_schedule == "piecewise":
        for epoch, step in zip(o.lr_boundaries, o.boundary_steps(steps_per_epoch)):
            if step >= max_steps:
                return f"--lr_boundaries: the drop at epoch {epoch:g} (step {step})"
        return None
    end = o.T_max * steps_per_epoch
    return f"--T_max {o.T_max:g}: the cosine's end (step {end:.0f})" if end > max_steps else None


def _cosine_table(o: Optimizer, scale: float):
    """The rate of each epoch 0 .. ceil(T_max), in float64, term for term as the reference
    computes it (so that the float32 values are the same)."""
    base, t_max = o.lr * scale, o.T_max
    values = [
        o.eta_min + (base - o.eta_min) * (1.0 + math.cos(math.pi * min(e, t_max) / t_max)) / 2
        for e in range(math.ceil(t_max) + 1)
    ]
    return tf.constant(values, tf.float64)
