"""The loop's clock: a run's step arithmetic (the reference's integer steps per epoch), one
meaning of "due" for logging, saving and evaluating, how far a call may run, and the fixed
calls of Ascend's device loop."""

from __future__ import annotations

import pytest
from conftest import demo_config

from vgg_keras import clock
from vgg_keras.errors import UsageError


def test_steps_per_epoch_are_the_references_integer_division():
    imagenet = demo_config("imagenet", synthetic=True)
    plan = clock.plan(imagenet, None)  # --synthetic without data: an ImageNet-sized epoch
    assert plan.steps_per_epoch == 1_281_167 // 256 == 5004
    assert plan.max_steps == 150 * 5004
    assert plan.every == {"log": 100, "save": 5004, "evaluate": None}
    demo = demo_config(data_dir="d")
    demo_plan = clock.plan(demo, 1437)
    assert (demo_plan.steps_per_epoch, demo_plan.max_steps) == (44, 880)
    assert demo_plan.every == {"log": 50, "save": 44, "evaluate": 220}
    assert demo_plan.recorded() == {"steps_per_epoch": 44, "global_batch": 32, "train_images": 1437}
    eight = clock.plan(demo, 1437, num_replicas=8)
    assert (eight.global_batch, eight.steps_per_epoch) == (256, 5)


def _plan(**every):
    intervals = {"log": None, "save": None, "evaluate": None, **every}
    return clock.Plan(1000, 8, 10, max_steps=95, call_steps=10, every=intervals)


@pytest.mark.parametrize("event", clock.EVENTS)
def test_an_event_is_due_once_its_multiple_is_reached_or_passed_and_at_the_end(event):
    plan = _plan(**{event: 20})
    assert not plan.due(event, since=0, step=19)
    assert plan.due(event, since=0, step=20) and plan.due(event, since=0, step=23)
    assert not plan.due(event, since=20, step=39)
    assert plan.due(event, since=37, step=41)  # passed 40 without stopping there
    assert plan.due(event, since=80, step=95), "the run's last step"
    assert not plan.due(event, since=95, step=95), "once per step"
    assert not _plan().due(event, since=0, step=95), "never without an interval"


def test_a_call_runs_to_the_next_due_step_at_most():
    plan = _plan(log=25, save=30)
    assert plan.call_length(0) == 10
    assert plan.call_length(20) == 5  # to the log at 25
    assert plan.call_length(27) == 3  # to the save at 30
    assert plan.call_length(91) == 4  # to the end at 95
    walked, step = [], 0
    while step < plan.max_steps:
        step += plan.call_length(step)
        walked.append(step)
    assert {25, 30, 50, 60, 75, 90, 95} <= set(walked)


def test_fixed_calls_need_multiples_of_the_loop_length():
    plan = clock.Plan(
        1000, 8, 10, max_steps=100, call_steps=10, every={"log": 20, "save": 50, "evaluate": None}
    )
    plan.check_fixed_calls()
    bad = clock.Plan(
        1000, 8, 10, max_steps=100, call_steps=10, every={"log": 20, "save": 44, "evaluate": None}
    )
    with pytest.raises(
        UsageError, match=r"--iterations_per_loop 10: on Ascend the save interval \(44 steps\)"
    ):
        bad.check_fixed_calls()
