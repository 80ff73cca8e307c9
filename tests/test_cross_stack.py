"""Checkpoints cross between the two stacks: trained on one (this test's interpreter, in this
process), evaluated and resumed on the other (Python 3.7 + TF 1.15, or Python >= 3.10 + TF 2),
and back again.

The other stack's interpreter is ``$VGG_OTHER_PYTHON`` or the venv ``make install`` builds for
it (``.venv-tf115`` from a TF 2 run, ``.venv`` from a TF 1.15 run).  CI installs both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT, run_script
from test_training import final_variables

from vgg_keras import compat

OTHER_VENV = ".venv" if compat.TF1 else ".venv-tf115"
OTHER_STACK = "TF 2" if compat.TF1 else "TF 1.15"


def _other_python() -> str | None:
    path = os.environ.get("VGG_OTHER_PYTHON") or os.path.join(REPO_ROOT, OTHER_VENV, "bin/python")
    return path if os.access(path, os.X_OK) else None


def _run(python: str, script: str, *args) -> subprocess.CompletedProcess:
    """``script`` on this stack (``python`` is this interpreter: in this process, as
    conftest.run_script) or on the other one (a subprocess of its interpreter)."""
    if python == sys.executable:
        proc = run_script(script, *args)
        assert proc.returncode == 0, (
            f"{script} {args}\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}"
        )
        return proc
    command = [python, os.path.join(REPO_ROOT, script), *map(str, args)]
    env = {**os.environ, "PYTHONPATH": REPO_ROOT}  # this checkout, whichever venv runs it
    proc = subprocess.run(
        command, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT, env=env
    )
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}"
    return proc


def test_checkpoints_evaluate_and_resume_on_the_other_stack(demo_dir, tmp_path):
    other = _other_python()
    if other is None:
        pytest.skip(f"no {OTHER_STACK} interpreter ({OTHER_VENV} absent; make install for it)")
    here = sys.executable
    flags = [
        "--preset", "demo", "--data_dir", demo_dir, "--width_multiplier", "0.0625",
        "--iterations_per_loop", "5", "--display_every", "10", "--save_checkpoints_steps", "10",
        "--progress", "false",
    ]  # fmt: skip
    crossed, straight = tmp_path / "crossed", tmp_path / "straight"
    # 20 steps here, then 2 more there: the other stack resumes weights, momentum, step, stream.
    _run(here, "run_train.py", *flags, "--max_train_steps", 20, "--log_dir", crossed)
    _run(other, "run_eval.py", "--ckpt", crossed, "--output", tmp_path / "eval_there")
    there = json.loads((tmp_path / "eval_there" / "eval_results.json").read_text())
    assert [r["step"] for r in there] == [20] and there[0]["images"] == 360
    _run(other, "run_train.py", *flags, "--max_train_steps", 22, "--log_dir", crossed)
    # ... and back: this stack evaluates the other's checkpoint the same way.
    _run(here, "run_eval.py", "--ckpt", crossed, "--output", tmp_path / "eval_here")
    back = json.loads((tmp_path / "eval_here" / "eval_results.json").read_text())
    assert [r["step"] for r in back] == [22] and back[0]["images"] == 360
    # The same step-20 checkpoint gives the same numbers on both stacks.
    _run(here, "run_eval.py", "--ckpt", crossed / "model.ckpt-20", "--output", tmp_path / "e20")
    here20 = json.loads((tmp_path / "e20" / "eval_results.json").read_text())[0]
    assert here20["top1"] == there[0]["top1"]
    assert here20["loss"] == pytest.approx(there[0]["loss"], rel=1e-4)
    # The crossed run ends where an uninterrupted run on this stack ends: same variable names,
    # same optimizer slots, same input stream and augmentation after the switch.  Not bit for
    # bit: the two TensorFlows' kernels round differently (~2e-6 after one step), and this plain
    # net amplifies that fast: measured after 2 steps <= 1.6e-6 both ways, with and without
    # oneDNN; after 5 steps up to 2.7e-4; after 20 steps 1e-1.  So only 2 steps are compared.  A
    # lost momentum slot would be off by ~80%, a batch from the wrong place in the stream by %.
    _run(here, "run_train.py", *flags, "--max_train_steps", 22, "--log_dir", straight)
    a, b = final_variables(crossed), final_variables(straight)
    assert a.keys() == b.keys()
    assert a["global_step"] == b["global_step"] == 22
    for name in a:
        gap = np.linalg.norm(np.float64(a[name]) - b[name]) / (np.linalg.norm(b[name]) + 1e-12)
        assert gap < 1e-3, f"{name}: relative difference {gap:.2e}"
