"""Notices a run that is not learning: a training loss stuck at chance, ln(class_num).

A plain (no batch-norm) VGG can sit at chance for many epochs when its learning rate is too high
for its initialisation, or stay there for good when its ReLUs have died; with uniform outputs the
cross-entropy is ln(class_num) whatever the label smoothing.  Costly to notice only at the end of
150 epochs, cheap to notice after two: one warning line, not an error.
"""

from __future__ import annotations

import math

PLATEAU_EPOCHS = 2.0
# Half-width of the band around ln(class_num), relative to it: 0.12 for 10 classes, 0.35 for 1000.
MARGIN = 0.05


class ChancePlateau:
    """Fed each logged (epoch, loss); says once when the loss has stayed at chance too long.

    The test is on the mean of the logged losses of the last PLATEAU_EPOCHS epochs (one batch's
    loss is noisy), and only once the run has logged that many epochs.  Never while the latest
    evaluation (``eval_top1``, set by the loop) is at least twice chance accuracy: a training
    loss near ln(class_num) is then label smoothing, dropout and augmentation, not a stuck net.
    """

    def __init__(self, class_num: int):
        self.chance = math.log(class_num)
        self.band = MARGIN * self.chance
        self.learning_top1 = 2 / class_num
        self.eval_top1: float | None = None
        self._history: list[tuple[float, float]] = []
        self._first_epoch: float | None = None
        self.warned = False

    def observe(self, epoch: float, loss: float) -> str | None:
        """The warning line, the first time the plateau is long enough; else None."""
        if self._first_epoch is None:
            self._first_epoch = epoch
        if not math.isfinite(loss):
            return None
        self._history.append((epoch, float(loss)))
        self._history = [(e, x) for e, x in self._history if e >= epoch - PLATEAU_EPOCHS]
        if self.warned or epoch - self._first_epoch < PLATEAU_EPOCHS:
            return None
        if self.eval_top1 is not None and self.eval_top1 >= self.learning_top1:
            return None
        mean = sum(x for _, x in self._history) / len(self._history)
        if abs(mean - self.chance) > self.band:
            return None
        self.warned = True
        return (
            f"warning: the training loss has stayed at chance level (mean {mean:.3f}, "
            f"ln(class_num) = {self.chance:.3f}) for {PLATEAU_EPOCHS:g} epochs, up to epoch "
            f"{epoch:.1f}: the network is not learning. Likely causes: a learning rate too high "
            "for a plain VGG (lower --lr, --clip_grad_norm, or longer --warmup_epochs), the "
            "initialisation (--conv_init fan_in; --dense_init he for width-scaled networks), "
            "labels that do not match the data (--label_offset, --class_num), or fp16 underflow "
            "(--precision fp32)"
        )
