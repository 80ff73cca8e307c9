"""The evaluation's files and what run_eval.py prints of them: the curve with training's own
evaluations of checkpoints not kept, the per-class lines, and pictures that are not blank."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from vgg_keras import config as config_lib
from vgg_keras import results, rundir


def _row(folder, step: int, top1: float, confusion=None) -> dict:
    row = {"checkpoint": os.path.join(folder, f"model.ckpt-{step}"), "step": step, "epoch": 1.0}
    row.update(top1=top1, top5=min(1.0, top1 + 0.2), loss=2.5 - 2 * top1, images=100)
    return {**row, "confusion": confusion} if confusion is not None else row


def _picture(path) -> np.ndarray:
    """The PNG's pixels; fails when it is blank (one colour, or hardly any)."""
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, f"{path} is blank"
    return pixels


def test_the_curve_and_the_per_class_files_are_pictures_and_say_where_they_are(tmp_path):
    run = str(tmp_path)
    # Training evaluated at 10, 20, 30 and 40; only the checkpoints of 30 and 40 were kept.
    with open(os.path.join(run, rundir.METRICS_FILE), "w") as f:
        for step, top1 in ((10, 0.3), (20, 0.6), (30, 0.9), (40, 1.0)):
            record = {"step": step, "eval_top1": top1, "eval_top5": 1.0, "eval_loss": 1 - top1}
            f.write(json.dumps(record) + "\n")
    confusion = np.diag([10] * 10)
    confusion[3, 3], confusion[3, 5] = 4, 6  # class 3: 40%, the worst
    config = config_lib.resolve(settings={"class_num": 10}, need_data=False)
    rows = [_row(run, 30, 0.9), _row(run, 40, 1.0, confusion.tolist())]
    lines = results.write(rows, config, run, "", crops=1)

    base = os.path.join(run, rundir.per_class_name(40))
    assert lines[0].startswith(f"per class, step 40: {base}.per_class.csv, {base}.confusion.png")
    assert lines[2].split() == ["3", "40.00", "4", "10", "3"]  # the worst class first
    assert len(lines) == 2 + results.WORST_CLASSES
    assert _picture(f"{base}.confusion.png").shape == (600, 600, 3)
    curve = _picture(os.path.join(run, rundir.curve_name()))
    assert curve.shape == (440, 900, 3)
    ten_crops = [_row(run, 30, 0.9), _row(run, 40, 1.0)]  # no confusion matrix: no lines
    assert results.write(ten_crops, config, run, "crops10", crops=10) == []
    assert _picture(os.path.join(run, rundir.curve_name("crops10"))).shape == (440, 900, 3)


def test_the_curve_shows_trainings_evaluations_only_for_the_runs_own_protocol(tmp_path):
    run = str(tmp_path)
    with open(os.path.join(run, rundir.METRICS_FILE), "w") as f:
        f.write(json.dumps({"step": 10, "eval_top1": 0.5, "eval_top5": 0.9, "eval_loss": 1.0}))
        f.write("\n" + json.dumps({"step": 10, "loss": 2.0}) + "\n")
    assert results._training_evaluations(run) == [
        {"step": 10, "top1": 0.5, "top5": 0.9, "loss": 1.0}
    ]
    assert results._training_evaluations(str(tmp_path / "none")) == []
    config = config_lib.resolve(settings={"class_num": 10}, need_data=False)
    results.write([_row(run, 30, 0.9)], config, run, "", crops=1)  # one row + step 10: a curve
    assert os.path.exists(os.path.join(run, rundir.curve_name()))
    results.write([_row(run, 30, 0.9)], config, run, "crops10", crops=10)  # one point: none
    assert not os.path.exists(os.path.join(run, rundir.curve_name("crops10")))
