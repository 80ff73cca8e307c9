"""Learning rates as graph ops of global_step: piecewise constant or cosine, with linear warmup.

Boundaries, T_max and warmup are given in epochs and converted with ``steps_per_epoch``.  Every
schedule is defined for every step, also past the planned end (piecewise keeps its last value,
cosine stays at ``eta_min``).
"""

from __future__ import annotations

import math

from vgg_keras.compat import tf
from vgg_keras.config import Config


def base_scale(config: Config, global_batch: int) -> float:
    """The linear-scaling rule, ``lr = base_lr * global_batch / 256``, when --scale_lr is set."""
    return global_batch / 256.0 if config.scale_lr else 1.0


def learning_rate(global_step, config: Config, steps_per_epoch: float, global_batch: int):
    """float32 scalar learning rate at ``global_step`` (an int64 tensor)."""
    scale = base_scale(config, global_batch)
    step = tf.cast(global_step, tf.float32)
    if config.lr_schedule == "piecewise":
        boundaries = [int(round(b * steps_per_epoch)) for b in config.lr_boundaries]
        values = [v * scale for v in config.piecewise_values]
        lr = tf.constant(values[-1], tf.float32)
        # Walk the boundaries from the last one down: the first boundary not yet reached wins.
        for boundary, value in reversed(list(zip(boundaries, values[:-1]))):
            lr = tf.where(step < boundary, tf.constant(value, tf.float32), lr)
    else:
        base, floor = config.lr * scale, config.eta_min
        t_max = max(config.T_max * steps_per_epoch, 1.0)
        progress = tf.minimum(step, t_max) / t_max
        lr = floor + (base - floor) * 0.5 * (1.0 + tf.cos(math.pi * progress))
    warmup_steps = config.warmup_epochs * steps_per_epoch
    if warmup_steps > 0:
        lr = lr * tf.minimum(1.0, (step + 1.0) / warmup_steps)
    return tf.identity(lr, name="learning_rate")
