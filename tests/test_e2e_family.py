"""The VGG family beyond VGG16/19 through the real programs, in this process: vgg11, vgg13 and the
batch-normalised vgg16_bn and vgg19_bn each train, resume, evaluate and export, and the exported
network runs batch norm in inference mode (an image's logits do not depend on its batch)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import stack_neutral

from vgg_keras import commands, compat, rundir
from vgg_keras.compat import keras, tf
from vgg_keras.reporting import read_metrics

TINY = ["--preset", "demo", "--width_multiplier", "0.0625", "--batch_size", "8"]
TINY += ["--mode", "train", "--display_every", "2", "--progress", "false"]


def _run(program: str, *argv) -> None:
    try:
        code = commands.main(program, [str(a) for a in argv])
    finally:
        compat.set_precision_policy("fp32")
    assert code == 0, f"{program} {argv} exited {code}"


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch_name",
    # TF 1.15 runs one plain and one batch-normalised row: the rest differ in the table only.
    ["vgg11", pytest.param("vgg13", marks=stack_neutral)]
    + [pytest.param("vgg16_bn", marks=stack_neutral), "vgg19_bn"],
)
def test_trains_resumes_evaluates_and_exports(arch_name, demo_dir, tmp_path):
    run = tmp_path / "run"
    flags = [*TINY, "--arch", arch_name, "--data_dir", demo_dir, "--log_dir", run]
    _run("train", *flags, "--max_train_steps", 4)
    _run("train", *flags, "--max_train_steps", 6)  # the same folder: goes on from step 4
    steps = [rundir.checkpoint_step(p) for p in rundir.list_checkpoints(str(run))]
    assert steps == [4, 6]
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == [2, 4, 6]
    assert json.loads((run / "config.json").read_text())["arch"] == arch_name

    _run("eval", "--ckpt", run, "--all_ckpts", "--data_dir", demo_dir)
    rows = json.loads((run / "eval_results.json").read_text())
    assert [row["step"] for row in rows] == [4, 6] and all(row["images"] == 360 for row in rows)

    out = tmp_path / "export"
    _run("export", "--ckpt", run, "--format", "keras", "--output", out)
    model = keras.models.load_model(os.path.join(out, "model.h5"), compile=False)
    assert model.count_params() > 0 and model.name.startswith(arch_name.split("_")[0])
    images = np.random.default_rng(0).standard_normal((4, 32, 32, 3)).astype(np.float32)
    together = model(tf.constant(images), training=False).numpy()
    alone = model(tf.constant(images[:1]), training=False).numpy()
    np.testing.assert_allclose(alone[0], together[0], rtol=1e-4, atol=1e-5)
    if arch_name.endswith("_bn"):
        trained = model(tf.constant(images), training=True).numpy()
        assert np.abs(trained - together).max() > 1e-3, "training-mode batch norm differs"
