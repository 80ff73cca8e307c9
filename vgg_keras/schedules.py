"""Learning rates as graph ops of global_step: piecewise constant or cosine, with linear warmup.

Boundaries, T_max and warmup are given in epochs and converted with ``steps_per_epoch``.  Every
schedule is defined for every step, also past the planned end (piecewise keeps its last value,
cosine stays at ``eta_min``).
"""

from __future__ import annotations

import math

from vgg_keras.compat import tf, v1
from vgg_keras.config import Config


def base_scale(config: Config, global_batch: int) -> float:
    """The linear-scaling rule, ``lr = base_lr * global_batch / 256``, when --scale_lr is set."""
    return global_batch / 256.0 if config.scale_lr else 1.0


def learning_rate(global_step, config: Config, steps_per_epoch: float, global_batch: int):
    """float32 scalar learning rate at ``global_step`` (an int64 tensor)."""
    scale = base_scale(config, global_batch)
    step = tf.cast(global_step, tf.float32)
    if config.lr_schedule == "piecewise" and not config.lr_boundaries:
        lr = tf.constant(config.piecewise_values[0] * scale, tf.float32)
    elif config.lr_schedule == "piecewise":
        # piecewise_constant keeps values[i] while step <= boundaries[i]; the next value starts
        # at the boundary step itself, hence boundary - 1 on the integer step.
        boundaries = [int(round(b * steps_per_epoch)) - 1 for b in config.lr_boundaries]
        values = [float(v * scale) for v in config.piecewise_values]
        lr = v1.train.piecewise_constant(tf.cast(global_step, tf.int64), boundaries, values)
    else:
        base, floor = config.lr * scale, config.eta_min
        t_max = max(config.T_max * steps_per_epoch, 1.0)
        progress = tf.minimum(step, t_max) / t_max
        lr = floor + (base - floor) * 0.5 * (1.0 + tf.cos(math.pi * progress))
    warmup_steps = config.warmup_epochs * steps_per_epoch
    if warmup_steps > 0:
        lr = lr * tf.minimum(1.0, (step + 1.0) / warmup_steps)
    return tf.identity(lr, name="learning_rate")
