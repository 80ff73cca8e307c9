"""Learning-rate schedules as graph ops of global_step: the reference's piecewise table and the
VGG16 copy's per-epoch cosine at every step of a 150-epoch run, boundaries that scale with the
global batch, cosine landmarks, past the planned end, linear warmup, the linear-scaling rule.

The lr at global_step ``s`` is the rate of the update that takes the step from ``s`` to ``s + 1``
(the reference gathers its table at global_step).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from vgg_keras import schedules
from vgg_keras.compat import tf, v1
from vgg_keras.config import resolve

STEPS_PER_EPOCH = 10
IMAGENET_STEPS = 1_281_167 // 256  # 5004, the reference's steps per epoch at batch 256


def lr_at(steps, global_batch: int = 256, steps_per_epoch: int = STEPS_PER_EPOCH, **settings):
    """The schedule of ``settings`` at each of ``steps``, evaluated as one tensor."""
    optimizer = resolve(settings={"synthetic": True, **settings}).optimizer
    with tf.Graph().as_default() as graph:
        step = tf.constant(np.asarray(steps, dtype=np.int64))
        lr = schedules.learning_rate(step, optimizer, steps_per_epoch, global_batch)
        assert lr.dtype == tf.float32
    with v1.Session(graph=graph) as sess:
        return sess.run(lr)


def expand(runs, length: int) -> np.ndarray:
    """A per-step float32 table from [[first_step, value], ...] runs."""
    table = np.empty(length, np.float32)
    for (start, value), (end, _) in zip(runs, [*runs[1:], [length, None]]):
        table[start:end] = value
    return table


def test_the_default_is_the_seeds_table_at_every_step_of_150_epochs():
    """The seed's hyper_param.py: 0.01 until step 330,000, 1e-3 until 520,000, 1e-4 through
    625,000 (its `elif i > 625000`), then 1e-5; 150 * 5004 steps."""
    steps = np.arange(150 * IMAGENET_STEPS)
    got = lr_at(steps, steps_per_epoch=IMAGENET_STEPS)
    runs = [[0, 0.01], [330_000, 0.001], [520_000, 0.0001], [625_001, 1e-05]]
    np.testing.assert_array_equal(got, expand(runs, len(steps)))


def test_the_boundaries_keep_their_epochs_at_another_global_batch():
    steps_per_epoch = 1_281_167 // 512  # 2502
    got = lr_at([164_999, 165_000, 259_999, 260_000, 312_499, 312_500], 512, steps_per_epoch)
    np.testing.assert_array_equal(got, np.float32([1e-2, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5]))


def test_cosine_epoch_is_the_vgg16_copys_table():
    """The VGG16 copy: ``0.005 (1 + cos(pi floor(step / 5004) / 150))``, as its numpy table
    holds it (float64 arithmetic rounded to float32)."""
    steps = np.arange(0, 150 * IMAGENET_STEPS, 7)
    got = lr_at(steps, steps_per_epoch=IMAGENET_STEPS, lr_schedule="cosine_epoch")
    epoch = steps // IMAGENET_STEPS
    expected = [0.0 + (0.01 - 0.0) * (1.0 + math.cos(math.pi * e / 150)) / 2 for e in epoch]
    np.testing.assert_array_equal(got, np.float32(expected))
    assert len(set(got[epoch == 17])) == 1, "constant within an epoch"


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
    # 1437 demo images // 32 = 44 steps per epoch: boundary 1.5 epochs = step 66.
    got = lr_at([65, 66], steps_per_epoch=1437 // 32, lr=0.2, lr_boundaries=[1.5])
    np.testing.assert_allclose(got, [0.2, 0.02], rtol=1e-6)


@pytest.mark.parametrize("eta_min", [0.0, 0.001])
def test_cosine_landmarks_and_past_t_max(eta_min):
    # T_max 10 epochs = 100 steps.
    got = lr_at(
        [0, 25, 50, 100, 101, 10**6], lr=0.1, lr_schedule="cosine", T_max=10, eta_min=eta_min
    )
    quarter = eta_min + (0.1 - eta_min) * 0.5 * (1 + math.cos(math.pi / 4))
    expected = [0.1, quarter, (0.1 + eta_min) / 2, eta_min, eta_min, eta_min]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)


def test_cosine_epoch_stays_at_eta_min_past_t_max():
    # T_max 6 epochs = 60 steps: step 59 is epoch 5's rate, then eta_min for good.
    got = lr_at([59, 60, 61, 10**7], lr=0.1, lr_schedule="cosine_epoch", T_max=6, eta_min=0.01)
    epoch5 = 0.01 + 0.09 * (1 + math.cos(math.pi * 5 / 6)) / 2
    np.testing.assert_allclose(got, [epoch5, 0.01, 0.01, 0.01], rtol=1e-6)


@pytest.mark.parametrize(
    "schedule", [{"lr_schedule": "piecewise", "lr_boundaries": [3]}, {"lr_schedule": "cosine"}]
)
def test_warmup_ramps_linearly_to_lr_then_joins_the_schedule(schedule):
    """As the reference's linear_warmup_lr: update s runs at lr (s + 1) / warmup_steps, then
    the schedule's own rate at that step."""
    steps = np.arange(0, 60)
    plain = lr_at(steps, lr=0.4, T_max=6, **schedule)
    warm = lr_at(steps, lr=0.4, T_max=6, warmup_epochs=2, **schedule)  # 20 steps
    np.testing.assert_allclose(warm[:20], 0.4 * (steps[:20] + 1) / 20, rtol=1e-6)
    np.testing.assert_array_equal(warm[20:], plain[20:])
    assert np.all(np.diff(warm[:20]) > 0), "warmup only rises"


@pytest.mark.parametrize("schedule", ["piecewise", "cosine", "cosine_epoch"])
def test_scale_lr_multiplies_by_global_batch_over_256(schedule):
    steps = [0, 25, 60]
    settings = dict(lr=0.1, lr_schedule=schedule, lr_boundaries=[2, 5], T_max=10, eta_min=0.0)
    plain = lr_at(steps, global_batch=1024, **settings)
    scaled = lr_at(steps, global_batch=1024, scale_lr=True, **settings)
    np.testing.assert_allclose(scaled, plain * 4, rtol=1e-6)
    assert scaled[0] == pytest.approx(0.4)
    half = lr_at(steps, global_batch=128, scale_lr=True, **settings)
    np.testing.assert_allclose(half, plain / 2, rtol=1e-6)


@pytest.mark.parametrize(
    "settings, max_epochs, said",
    [
        ({}, 60, "--lr_boundaries: the drop at epoch 65.9"),  # the default piecewise
        ({"lr_boundaries": [2, 7]}, 6, "--lr_boundaries: the drop at epoch 7 (step 70)"),
        ({"lr_boundaries": [2, 6]}, 6, "--lr_boundaries: the drop at epoch 6 (step 60)"),
        ({"lr_boundaries": [2, 5]}, 6, None),
        ({"lr_schedule": "cosine", "T_max": 8}, 6, "--T_max 8: the cosine's end (step 80)"),
        ({"lr_schedule": "cosine_epoch", "T_max": 8}, 6, "--T_max 8: the cosine's end (step 80)"),
        ({"lr_schedule": "cosine", "T_max": 6}, 6, None),
    ],
)
def test_a_change_of_the_rate_beyond_the_runs_end_is_named(settings, max_epochs, said):
    """The last update of a run of N steps runs at the rate of step N - 1: a boundary at step
    N or later never applies, a cosine longer than the run never reaches eta_min."""
    optimizer = resolve(settings={"synthetic": True, **settings}).optimizer
    got = schedules.unreached(optimizer, STEPS_PER_EPOCH, max_epochs * STEPS_PER_EPOCH)
    assert got == said if said is None or "(" in said else got.startswith(said)
