"""The chance-plateau warning: once, after the loss has sat at ln(class_num) for long enough."""

from __future__ import annotations

import math

import pytest

from vgg_keras.plateau import ChancePlateau

CHANCE_10 = math.log(10)


def feed(detector: ChancePlateau, losses, lines_per_epoch: int = 4) -> list[str]:
    """Observe ``losses`` as log lines spaced 1/lines_per_epoch epoch apart; the warnings."""
    warnings = []
    for i, loss in enumerate(losses, start=1):
        line = detector.observe(i / lines_per_epoch, loss)
        if line:
            warnings.append(line)
    return warnings


def test_warns_once_when_the_loss_sits_at_chance_for_more_than_two_epochs():
    detector = ChancePlateau(10)
    noisy_chance = [CHANCE_10 + d for d in (0.05, -0.08, 0.03, -0.02)] * 5  # 5 epochs
    warnings = feed(detector, noisy_chance)
    assert len(warnings) == 1
    assert "ln(class_num) = 2.303" in warnings[0]
    assert all(f in warnings[0] for f in ("--lr", "--clip_grad_norm", "--conv_init"))


def test_the_warning_comes_after_two_epochs_not_before():
    detector = ChancePlateau(10)
    epochs_at_warning = []
    for i in range(1, 41):
        if detector.observe(i / 4, CHANCE_10):
            epochs_at_warning.append(i / 4)
    assert epochs_at_warning == [2.25]  # the first line more than two epochs after the first


def test_no_warning_for_a_run_that_learns():
    detector = ChancePlateau(10)
    # Starts at chance, then falls well below it within the first two epochs.
    losses = [2.30, 2.29, 2.1, 1.9, 1.6, 1.4, 1.2, 1.0, 0.9, 0.8, 0.7, 0.6]
    assert feed(detector, losses) == []


def test_a_run_that_returns_to_chance_is_caught():
    """The plateau the demo fell into on AVX2 CPUs: learns a little, then collapses."""
    detector = ChancePlateau(10)
    losses = [2.3, 2.0, 1.8, 1.9] + [CHANCE_10] * 12
    warnings = feed(detector, losses)
    assert len(warnings) == 1


def test_the_band_scales_with_the_number_of_classes():
    imagenet = ChancePlateau(1000)
    assert feed(imagenet, [math.log(1000) - 0.3] * 12)  # within 5% of 6.91
    imagenet = ChancePlateau(1000)
    assert not feed(imagenet, [math.log(1000) - 0.5] * 12)


@pytest.mark.parametrize("classes", [3, 10, 1000])
def test_never_while_the_latest_evaluation_is_at_least_twice_chance(classes):
    """A loss near ln(class_num) with label smoothing, dropout and strong augmentation, under
    an evaluation well above chance (--preset small on 3 classes: 87.9%), is a net that learns."""
    at_chance = [math.log(classes)] * 40
    for top1, warns in ((2 / classes, False), (0.879, False), (1.9 / classes, True)):
        detector = ChancePlateau(classes)
        detector.eval_top1 = top1
        assert bool(feed(detector, at_chance)) == warns, (classes, top1)
    detector = ChancePlateau(classes)  # the evaluation comes later: from then on, silent
    assert not feed(detector, at_chance[:8]) and not detector.warned
    detector.eval_top1 = 0.9
    assert not feed(detector, at_chance)


def test_non_finite_losses_are_ignored():
    detector = ChancePlateau(10)
    assert feed(detector, [float("nan")] * 12) == []


@pytest.mark.slow
def test_run_train_warns_once_when_the_network_does_not_learn(script_runner, demo_dir, tmp_path):
    """A learning rate of 1e-9 leaves the demo net at chance: after two epochs the log says so,
    and the run still ends normally (a warning, not an error)."""
    log_dir = tmp_path / "stuck"
    proc = script_runner(
        "run_train.py",
        *("--preset", "demo", "--data_dir", demo_dir, "--log_dir", log_dir, "--mode", "train"),
        *("--width_multiplier", "0.0625", "--progress", "false", "--lr", "1e-9"),
        *("--max_epochs", "3", "--display_every", "15"),
    )
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stdout.splitlines() if "stayed at chance" in line]
    assert len(warnings) == 1, proc.stdout
    assert "ln(class_num) = 2.303" in warnings[0] and "--lr" in warnings[0]
    with open(log_dir / "train.log") as f:
        assert warnings[0] in f.read()
