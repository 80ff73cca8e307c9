"""The README's demo, ``run_train.py --preset demo``, trained once for the whole suite (the
``demo_run`` fixture, in one test file so that one test process waits for it): it reaches 97%
top-1, its log and config.json, every checkpoint evaluated again by run_eval.py, no plateau
warning on a run that learns."""

from __future__ import annotations

import json
import os

import pytest
from conftest import demo_config
from test_e2e_eval import RESULTS_JSON, _table

from vgg_keras import results, rundir
from vgg_keras.reporting import read_metrics

pytestmark = pytest.mark.slow


def test_demo_reaches_97_percent_top1(demo_run):
    evals = [r for r in read_metrics(demo_run) if "eval_top1" in r]
    # --preset demo: 20 epochs of 1437 // 32 = 44 steps, evaluated every 5 epochs.
    assert [r["step"] for r in evals] == [220, 440, 660, 880]
    assert evals[-1]["eval_top1"] >= 0.97, evals
    assert rundir.latest_checkpoint(demo_run).endswith("model.ckpt-880")


def test_demo_log_prints_train_lines_and_the_evaluation_table(demo_run):
    with open(os.path.join(demo_run, "train.log")) as f:
        lines = f.read().splitlines()
    # <date> <time>  step: N  epoch: ...  top1: ..%  eta H:MM:SS
    train_lines = [line.split() for line in lines if "  step:" in line]
    assert [int(words[3]) for words in train_lines] == list(range(50, 880, 50)) + [880]
    assert all(words[2] == "step:" and words[-2] == "eta" for words in train_lines)
    assert train_lines[-1][-1] == "0:00:00"  # nothing left at the last step
    assert lines.count(results.HEADER) == 4  # once per evaluation, in percent
    header = lines.index(results.HEADER)
    assert lines[header + 1].split()[:2] == ["220", "5.0"]
    assert lines[-1] == f"done: 880 steps, checkpoint {demo_run}/model.ckpt-880"


def test_demo_config_json_is_the_resolved_configuration(demo_run, demo_dir):
    with open(os.path.join(demo_run, "config.json")) as f:
        written = json.load(f)
    resolved = demo_config(data_dir=demo_dir, log_dir=demo_run)
    recorded = written.pop("run")
    assert written == json.loads(resolved.to_json())
    assert written["mode"] == "train_and_evaluate" and written["class_num"] == 10
    counts = {"steps_per_epoch": 44, "global_batch": 32, "train_images": 1437, "replicas": 1}
    assert recorded == {
        "id": recorded["id"],
        **counts,
        "history": [{"step": 0, "global_batch": 32}],
    }


def test_demo_run_every_checkpoint_and_final_accuracy(demo_run, tmp_path, script_runner):
    proc = script_runner("run_eval.py", "--all-ckpts", "--eval_dir", demo_run, "--output", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(tmp_path / RESULTS_JSON) as f:
        found = json.load(f)
    kept = rundir.list_checkpoints(demo_run)
    assert [r["checkpoint"] for r in found] == kept
    assert [int(r[0]) for r in _table(proc.stdout)] == [r["step"] for r in found]
    assert found[-1]["step"] == 880  # 20 epochs of 1437 // 32 = 44 steps
    assert found[-1]["top1"] >= 0.97
    # Training's own evaluation (train_and_evaluate) runs this same code: same final top-1.
    with open(os.path.join(demo_run, "metrics.jsonl")) as f:
        evals = [r for r in map(json.loads, f) if "eval_top1" in r]
    assert evals[-1]["step"] == found[-1]["step"]
    assert evals[-1]["eval_top1"] == pytest.approx(found[-1]["top1"], abs=1e-9)


def test_a_learning_run_logs_no_plateau_warning_and_its_gradient_norm(demo_run):
    """The README's demo: no warning; metrics.jsonl carries the gradient norm of each line's
    step, finite and non-zero from the first line on."""
    with open(f"{demo_run}/train.log") as f:
        assert "stayed at chance" not in f.read()
    norms = [r["grad_norm"] for r in read_metrics(demo_run) if "grad_norm" in r]
    assert len(norms) >= 18 and all(0 < n < 1e3 for n in norms)
