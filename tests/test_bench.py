"""The benchmarks: each runs in --quick mode and writes a well-formed figure; their arithmetic.

--quick shrinks the networks and step counts (the numbers mean nothing), not the code path:
the real run_train.py processes, TFRecord shards, Pillow worker processes and bare graphs run.
"""

from __future__ import annotations

import importlib
import json
import math
import random
import subprocess
import sys
import time

import numpy as np
import pytest

from bench import common, pillow_baseline, run_all
from vgg_keras import compat
from vgg_keras.compat import tf

# gpu: through run_all below; torch_peer: its own cheap tests below (the demo twice is not).
FIGURES = [f for f in run_all.FIGURES if f not in ("gpu", "torch_peer")]


def _check_figure(fig: dict, name: str) -> None:
    assert fig["quick"] is True and fig["command"] == f"python -m bench.{name} --quick"
    assert fig["machine"]["cores"] >= 1 and fig["seconds"] >= 0
    assert fig["rows"], name
    for row in fig["rows"]:
        assert set(row) >= {"what", "value", "unit", "ratio", "ratio_is"}
        assert row["value"] is None or math.isfinite(row["value"]), row
        assert (row["ratio"] is None) == (not row["ratio_is"]), row
    for t in fig["targets"]:
        op, threshold = t["target"].split()
        if t["value"] is not None:
            expected = (
                t["value"] >= float(threshold) if op == ">=" else t["value"] <= float(threshold)
            )
            assert t["held"] is expected, t


def _rows(fig: dict) -> dict:
    return {row["what"]: row for row in fig["rows"]}


@pytest.mark.slow
@pytest.mark.parametrize("name", FIGURES)
def test_benchmark_quick_writes_its_figure_and_keeps_the_others(tmp_path, name, capsys):
    out = tmp_path / "results.json"
    common.write_figure(out, "other", {"kept": True})
    module = importlib.import_module(f"bench.{name}")
    assert module.main(["--quick", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["figures"]["other"] == {"kept": True}
    fig = results["figures"][name]
    _check_figure(fig, name)
    assert fig["title"] in capsys.readouterr().out  # the table was printed
    rows = _rows(fig)
    if name == "input_pipeline":
        # --quick: 1 thread; (train, eval) x (project, (a), (b)), and the project's per-image
        # training work alone against (a).
        assert len(rows) == 7
        alone = rows["train: project's per-image work alone, in-memory JPEGs, 1 thread"]
        minimal = rows["train: (a) minimal tf.data, 1 thread"]
        assert alone["ratio"] == pytest.approx(alone["value"] / minimal["value"])
        for kind in ("train", "eval"):
            ours = rows[f"{kind}: project, 1 thread"]
            assert ours["value"] > 0 and ours["per_cpu_second"] > 0
            for baseline in ("(a) minimal tf.data, 1 thread", "(b) Pillow/torchvision, 1 process"):
                row = rows[f"{kind}: {baseline}"]
                assert row["ratio"] == pytest.approx(ours["value"] / row["value"])
                assert row["ratio_cpu"] == pytest.approx(
                    ours["per_cpu_second"] / row["per_cpu_second"]
                )
    elif name == "train_compute":
        assert rows["bare graph fp32"]["ratio"] == pytest.approx(
            rows["run_train.py fp32"]["value"] / rows["bare graph fp32"]["value"]
        )
        assert rows["run_train.py bf16"]["ratio"] == pytest.approx(
            rows["run_train.py bf16"]["value"] / rows["run_train.py fp32"]["value"]
        )
    elif name == "loop_sinking":
        bare = rows.pop("bare one-step graph (sess.run per step)")
        assert set(rows) == {"--iterations_per_loop 1", "--iterations_per_loop 20"}
        assert all(r["value"] > 0 for r in rows.values())
        assert bare["ratio"] == pytest.approx(
            rows["--iterations_per_loop 20"]["value"] / bare["value"]
        )
    elif name == "memory":
        assert rows["VGG16 peak RSS"]["value"] >= rows["VGG16 RSS between steps"]["value"] > 50
        assert rows["small net RSS after 10 steps"]["value"] > 50
    elif name == "time_to_accuracy":
        assert 0 <= rows["demo run, final top-1"]["value"] <= 1
        assert fig["evaluations"] and fig["evaluations"][-1]["step"] == 30


def test_run_all_runs_the_chosen_figure_and_prints_the_markdown_summary(tmp_path):
    """Through the command line: the gpu section reports a skip on a machine without a GPU."""
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run_all", "--quick", "--only", "gpu", "--out", str(out)],
        cwd=common.REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    fig = json.loads(out.read_text())["figures"]["gpu"]
    if compat.gpu_count():
        _check_figure(fig, "gpu")
    else:
        assert fig["skipped"] == "no GPU visible" and fig["rows"] == []
        assert "skipped: no GPU visible" in proc.stdout
    assert "| figure | target | measured | held |" in proc.stdout


def test_run_all_rejects_an_unknown_figure(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        run_all.main(["--only", "nonsense", "--out", str(tmp_path / "r.json")])
    assert exit_info.value.code == 2


def test_markdown_lists_rows_and_targets():
    fig = common.figure(
        "x",
        "Figure X",
        False,
        1.0,
        [common.row("fast", 300.0, "images/s"), common.row("slow", 100.0, "images/s", 3.0, "fast / this")],
        [common.target("speed-up", 3.0, 2.5), common.target("growth", 1.2, 1.05, at_most=True)],
    )  # fmt: skip
    text = run_all.markdown({"figures": {"x": fig}})
    assert "| slow | 100 images/s | 3.00 (fast / this) |" in text
    assert "| x | speed-up >= 2.5 | 3 | yes |" in text
    assert "| x | growth <= 1.05 | 1.2 | **no** |" in text


def test_a_kernel_cap_is_recorded_with_the_figure_and_named_in_its_header(monkeypatch):
    """Figures timed with another CPU kind's kernels (ONEDNN_MAX_CPU_ISA) say so where read."""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    fig = common.figure("x", "Figure X", False, 1.0, [], [])
    assert fig["machine"]["onednn_max_cpu_isa"] == "AVX2"
    assert "aten_cpu_capability" not in fig["machine"]
    assert ", ONEDNN_MAX_CPU_ISA=AVX2, 2 cores" in run_all.markdown(
        {"figures": {"x": {**fig, "machine": {**fig["machine"], "cores": 2}}}}
    )


@pytest.mark.parametrize(
    "cap, allowed",
    [("", True), ("ALL", True), ("AVX512_CORE_BF16", True), ("AVX512_CORE_AMX", True)]
    + [("AVX2", False), ("avx512_core", False), ("AVX512_CORE_VNNI", False)],
)
def test_bf16_is_timed_only_where_onednn_may_use_bf16_instructions(monkeypatch, cap, allowed):
    """Capped below AVX-512-BF16, oneDNN has no bf16 convolution and the step would fail."""
    from vgg_keras import compat

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert common.onednn_bf16() is allowed
    monkeypatch.setattr(compat, "fast_bf16", lambda: True)
    assert common.bf16_kernels() is allowed
    monkeypatch.setattr(compat, "fast_bf16", lambda: False)  # emulated: not timed either
    assert common.bf16_kernels() is False


def test_steady_fps_weights_each_interval_by_its_images():
    # 10 steps of 8 at 80 images/s (1 s), then 30 steps at 240 images/s (1 s): 320 images, 2 s.
    records = [
        {"step": 10, "fps": 1.0},  # warm-up, skipped
        {"step": 20, "fps": 80.0},
        {"step": 50, "fps": 240.0},
        {"step": 50, "eval_top1": 0.5},
    ]
    run = common.TrainRun(records, 0.0, 0, "log")
    assert run.steady_fps(10, 8) == pytest.approx(160.0)
    assert run.eval_records() == [records[-1]]
    with pytest.raises(RuntimeError, match="no log interval"):
        run.steady_fps(50, 8)


def test_run_train_failure_names_the_command_and_shows_its_output(tmp_path):
    with pytest.raises(RuntimeError, match="exited 2") as err:
        common.run_train(["--batch_size", "0", "--synthetic"], str(tmp_path / "bad"))
    assert "--batch_size" in str(err.value)


def test_random_resized_crop_params_match_torchvision_rules():
    rng = random.Random(0)
    for _ in range(500):
        top, left, h, w = pillow_baseline.random_resized_crop_params(500, 375, rng)
        assert 0 <= top <= 375 - h and 0 <= left <= 500 - w
        assert 0.08 * 0.999 <= h * w / (500 * 375) <= 1.0
        assert 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05  # rounding of w and h
    # An image too thin for any crop falls back to the central crop of the widest allowed ratio.
    assert pillow_baseline.random_resized_crop_params(1000, 10, random.Random(0)) == (
        0,
        493,
        10,
        13,
    )


def test_training_flops_of_vgg16_are_the_published_92_7_gflop_per_image():
    from bench import train_compute
    from vgg_keras.api import build_vgg

    with tf.Graph().as_default():
        model = build_vgg("vgg16", 1000, 224)
        assert train_compute.training_flops_per_image(model) / 1e9 == pytest.approx(92.7, abs=0.2)


def test_vgg16_arithmetic_is_three_copies_of_553_mb_plus_activations():
    from bench import memory

    need = memory.arithmetic_bytes(224, 1.0, 1000, 8)
    assert need["params"] == 138_357_544  # keras.applications.VGG16's count
    assert need["state"] / 3 / 1e6 == pytest.approx(553.4, abs=0.1)
    assert 400e6 < need["activations"] < 600e6  # ~15M floats per image, batch 8


def test_demo_robustness_measures_the_longest_stay_at_chance():
    from bench.demo_robustness import epochs_at_chance

    chance = 2.3026
    learning = [{"epoch": e / 3, "loss": 2.30 - 0.1 * e} for e in range(1, 20)]
    assert epochs_at_chance(learning) == pytest.approx(1 / 3)  # only the first line
    stuck = (
        [{"epoch": 0.5, "loss": 1.9}]
        + [{"epoch": 0.5 + e / 2, "loss": chance + 0.01} for e in range(1, 7)]  # epochs 1..3.5
        + [{"epoch": 4.0, "loss": 1.0}, {"epoch": 4.5, "loss": chance}]
    )
    assert epochs_at_chance(stuck) == pytest.approx(3.0)  # from the line at 0.5 to 3.5
    assert epochs_at_chance(stuck, after_epoch=1.0) == pytest.approx(2.5)


def _sleeping_source(seconds_per_batch: float, batch: int = 8):
    def next_batch() -> int:
        time.sleep(seconds_per_batch)
        return batch

    return next_batch


def test_images_per_second_of_a_source_of_known_speed():
    """8 images per 5 ms of sleep: at most 1600 images/s (a sleep only overshoots), and nearly
    no CPU, so the per-CPU-second rate is far above the wall-clock one."""
    wall, cpu = common.images_per_second(_sleeping_source(0.005), seconds=0.3)
    assert 400 < wall <= 1600 * 1.01
    assert cpu > 3 * wall
    slowed, _ = common.images_per_second(_sleeping_source(0.02), seconds=0.3)
    assert slowed <= 400 * 1.01 and common.ratio(slowed, wall) < 0.6


def test_a_baseline_slowed_on_purpose_shows_the_project_faster():
    """The input-pipeline benchmark's measurement and row on two tf.data pipelines, one slowed
    by 10 ms per batch: its row's ratio (project / baseline) must be well above 1."""
    from bench import input_pipeline

    fast = tf.data.Dataset.from_tensor_slices(np.zeros((64, 4), np.float32)).repeat().batch(8)

    def pause(batch):
        time.sleep(0.01)
        return batch

    slow = fast.map(lambda x: tf.numpy_function(pause, [x], tf.float32))
    project = input_pipeline.tf_rate(fast, threads=1, seconds=0.3)
    baseline = input_pipeline.tf_rate(slow, threads=1, seconds=0.3)
    assert baseline[0] <= 800 * 1.01  # 8 images per >= 10 ms
    row = input_pipeline._row("slowed baseline", baseline, project)
    assert row["value"] == baseline[0] and row["ratio"] == project[0] / baseline[0]
    assert row["ratio"] > 2 and row["ratio_is"] == "project / this"


def test_torch_peer_without_torch_records_a_skip(tmp_path, monkeypatch, capsys):
    """CI installs .[dev] only: the PyTorch figure is a skip with its reason, not a failure."""
    from bench import torch_peer

    monkeypatch.setattr(torch_peer, "torch_available", lambda: False)
    out = tmp_path / "results.json"
    assert torch_peer.main(["--quick", "--out", str(out)]) == 0
    fig = json.loads(out.read_text())["figures"]["torch_peer"]
    assert "torch" in fig["skipped"] and fig["rows"] == []
    assert "skipped: torch" in capsys.readouterr().out
    assert "skipped: torch" in run_all.markdown({"figures": {"torch_peer": fig}})


def test_torch_peer_trains_the_demo_network_on_decoded_arrays(tmp_path):
    """The peer script end to end on 64 random images for one epoch (a subprocess: no torch in
    this process); its network is the demo's: VGG16 x0.25 at 32 px, 10 classes."""
    from bench import torch_peer

    if not torch_peer.torch_available():  # (not importorskip: torch beside TF here crashes)
        pytest.skip("torch/torchvision not installed (the bench extra)")

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (96, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 96)
    arrays = tmp_path / "a.npz"
    np.savez(arrays, train_images=images[:64], train_labels=labels[:64],
             val_images=images[64:], val_labels=labels[64:])  # fmt: skip
    result, wall = torch_peer.run_peer(["demo", str(arrays), "--epochs", "1"])
    assert result["steps"] == 2 and 0 <= result["final_top1"] <= 1 and wall > 0
    assert [e["epoch"] for e in result["evaluations"]] == [1]
    for precision in ([], ["--bf16"]):  # the matmul that figure 2 takes as the peak
        result, _ = torch_peer.run_peer(["matmul", "--n", "64", *precision])
        assert result["gflops"] > 0


def test_demo_profile_adds_up_the_runs_parts_and_traces_the_kernels(demo_dir, tmp_path):
    """bench.demo_profile on a 30-step run of the 1/16-width network, one step per call (a
    subprocess: it patches the training module for the rest of its process)."""
    argv = ["--preset", "demo", "--data_dir", demo_dir, "--log_dir", str(tmp_path / "run"),
            "--width_multiplier", "0.0625", "--max_train_steps", "30", "--iterations_per_loop",
            "1", "--mode", "train", "--progress", "false", "--trace_ops"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "bench.demo_profile", *argv], capture_output=True, text=True,
        timeout=300, cwd=common.REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("profile: ")]
    calls = next(line for line in lines if "training session calls" in line)
    assert calls.endswith("(30 calls)")
    ops = {line.split()[4] for line in lines if "traced calls, op" in line}
    assert any("Conv2DBackpropFilter" in op for op in ops), lines
