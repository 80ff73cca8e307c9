"""Learning-rate schedules as graph ops of global_step: piecewise at its boundaries (given in
epochs, converted with steps_per_epoch), cosine at its landmarks, both past their planned end,
linear warmup, and the linear-scaling rule.

The lr at global_step ``s`` is the rate of the update that takes the step from ``s`` to ``s + 1``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from vgg_keras import schedules
from vgg_keras.compat import tf, v1
from vgg_keras.config import make_config

STEPS_PER_EPOCH = 10.0


def lr_at(steps, global_batch: int = 256, steps_per_epoch: float = STEPS_PER_EPOCH, **overrides):
    """The schedule of ``make_config(**overrides)`` evaluated at each step, in a v1 Session."""
    config = make_config(synthetic=True, **overrides)
    with tf.Graph().as_default() as graph:
        step = v1.placeholder(tf.int64, [])
        lr = schedules.learning_rate(step, config, steps_per_epoch, global_batch)
        assert lr.dtype == tf.float32
    with v1.Session(graph=graph) as sess:
        return np.array([sess.run(lr, {step: s}) for s in steps])


def test_piecewise_at_just_before_and_after_each_boundary():
    # Boundaries 2, 5, 7 epochs = steps 20, 50, 70.
    steps = [0, 19, 20, 21, 49, 50, 51, 69, 70, 71]
    got = lr_at(steps, lr_boundaries=[2, 5, 7], lr_values=[0.5, 0.25, 0.125, 0.0625])
    np.testing.assert_allclose(
        got, [0.5, 0.5, 0.25, 0.25, 0.25, 0.125, 0.125, 0.125, 0.0625, 0.0625], rtol=1e-7
    )


def test_piecewise_keeps_its_last_value_far_past_the_end():
    got = lr_at([150 * 10, 10**6, 10**9], lr_boundaries=[2, 5, 7], lr_values=[4, 3, 2, 1])
    np.testing.assert_array_equal(got, [1, 1, 1])


def test_piecewise_default_values_divide_by_ten_and_boundaries_round_to_steps():
    # 1437 demo images / 32 = 44.90625 steps per epoch: boundary 1.5 epochs = step round(67.36).
    got = lr_at([66, 67], steps_per_epoch=1437 / 32, lr=0.2, lr_boundaries=[1.5])
    np.testing.assert_allclose(got, [0.2, 0.02], rtol=1e-6)


def test_imagenet_recipe_ends_its_150_epochs_on_1e5():
    config = make_config(synthetic=True)
    steps_per_epoch = 1_281_167 / 256
    last_step = round(config.max_epochs * steps_per_epoch) - 1
    epochs = [0, 49.9, 50, 99.9, 100, 129.9, 130]
    steps = [round(e * steps_per_epoch) for e in epochs] + [last_step]
    got = lr_at(steps, steps_per_epoch=steps_per_epoch)
    np.testing.assert_allclose(got, [1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5], rtol=1e-5)


@pytest.mark.parametrize("eta_min", [0.0, 0.001])
def test_cosine_landmarks_and_past_t_max(eta_min):
    # T_max 10 epochs = 100 steps.
    got = lr_at(
        [0, 25, 50, 100, 101, 10**6], lr=0.1, lr_schedule="cosine", T_max=10, eta_min=eta_min
    )
    quarter = eta_min + (0.1 - eta_min) * 0.5 * (1 + math.cos(math.pi / 4))
    expected = [0.1, quarter, (0.1 + eta_min) / 2, eta_min, eta_min, eta_min]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "schedule", [{"lr_schedule": "piecewise", "lr_boundaries": [3]}, {"lr_schedule": "cosine"}]
)
def test_warmup_ramps_linearly_then_joins_the_schedule(schedule):
    # Warmup 2 epochs = 20 steps: update s runs at (s + 1) / 20 of the schedule's rate.
    steps = np.arange(0, 60)
    plain = lr_at(steps, lr=0.4, T_max=6, **schedule)
    warm = lr_at(steps, lr=0.4, T_max=6, warmup_epochs=2, **schedule)
    np.testing.assert_allclose(warm[:20], plain[:20] * (steps[:20] + 1) / 20, rtol=1e-6)
    np.testing.assert_allclose(warm[19:], plain[19:], rtol=1e-7)
    assert np.all(np.diff(warm[:20]) > 0), "warmup only rises"
    if schedule["lr_schedule"] == "piecewise":
        # A constant schedule makes the ramp a straight line from lr/20 to lr.
        np.testing.assert_allclose(np.diff(warm[:20]), 0.4 / 20, rtol=1e-5)


@pytest.mark.parametrize("schedule", ["piecewise", "cosine"])
def test_scale_lr_multiplies_by_global_batch_over_256(schedule):
    steps = [0, 25, 60]
    overrides = dict(lr=0.1, lr_schedule=schedule, lr_boundaries=[2, 5], T_max=10, eta_min=0.0)
    plain = lr_at(steps, global_batch=1024, **overrides)
    scaled = lr_at(steps, global_batch=1024, scale_lr=True, **overrides)
    np.testing.assert_allclose(scaled, plain * 4, rtol=1e-6)
    assert scaled[0] == pytest.approx(0.4)
    half = lr_at(steps, global_batch=128, scale_lr=True, **overrides)
    np.testing.assert_allclose(half, plain / 2, rtol=1e-6)
