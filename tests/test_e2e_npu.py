"""``run_train.py --distribution npu`` end to end on the CPU, with the test stand-in of
``npu_bridge`` (tests/npu_standin) on the ranks' PYTHONPATH: one rank with the device loop and
the NPU's loss scaling, and two ranks started by ``vgg_keras.launch`` whose gradients are
averaged over HCCL.  What only Ascend hardware can show is listed in docs/distributed.md."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
from test_npu_standin import REPO_ROOT, standin_environment

from vgg_keras import compat
from vgg_keras.compat import tf
from vgg_keras.reporting import read_metrics

# npu_bridge exists for TF 1.15 only: the TF 1.15 suite runs these trainings (the stand-in's
# own tests, test_npu_standin.py, run on both stacks).
pytestmark = pytest.mark.skipif(not compat.TF1, reason="Ascend's stack is TF 1.15")

TINY = ["--preset", "demo", "--width_multiplier", "0.0625", "--progress", "false"]
TINY += ["--mode", "train"]
# What a rank's checkpoint holds besides the CPU run's: the NPU loss scale manager's state.
LOSS_SCALE_STATE = {"loss_scale", "good_steps", "bad_steps"}


def _read(prefix) -> dict:
    reader = tf.train.load_checkpoint(str(prefix))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def _assert_close(got: dict, expected: dict, what: str, rtol: float = 1e-5) -> None:
    assert expected.keys() <= got.keys(), what
    for name, value in expected.items():
        np.testing.assert_allclose(
            got[name], value, rtol=rtol, atol=1e-6, err_msg=f"{what}: {name}"
        )


def test_one_rank_with_the_device_loop_and_loss_scaling_trains_as_the_cpu(
    demo_dir, train_tiny, tmp_path
):
    """20 steps as two device loops of 10, --precision fp16 (the NPU's loss scaling of a
    float32 graph), against the CPU's own 10-step loop in float32: the same weights."""
    trace = tmp_path / "device_loops"
    flags = [*TINY, "--data_dir", demo_dir, "--batch_size", "16", "--max_train_steps", "20"]
    flags += ["--iterations_per_loop", "10", "--display_every", "10"]
    flags += ["--save_checkpoints_steps", "10"]
    proc = subprocess.run(
        [sys.executable, "run_train.py", *flags, "--distribution", "npu", "--precision", "fp16"]
        + ["--log_dir", str(tmp_path / "npu")],
        env=standin_environment(RANK_ID="0", RANK_SIZE="1", NPU_STANDIN_TRACE=str(trace)),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "distribution: npu, 1 replicas = 1 worker(s) x 1" in proc.stdout
    loops = trace.read_text().split() if trace.exists() else []
    assert loops == ["10", "10"]  # two Session.run calls of 10 steps each
    code, _ = train_tiny(
        tmp_path / "cpu",
        batch_size=16,
        max_train_steps=20,
        iterations_per_loop=10,
        display_every=10,
        save_checkpoints_steps=10,
        distribution="none",
    )
    assert code == 0
    npu_weights, cpu_weights = (
        _read(tmp_path / "npu/model.ckpt-20"),
        _read(tmp_path / "cpu/model.ckpt-20"),
    )
    assert npu_weights.keys() - cpu_weights.keys() == LOSS_SCALE_STATE
    # Scaled by 2^32 and back, a power of two: in float32 only the kernels' order of operations
    # differs (the Ascend session config turns TensorFlow's op fusion off).
    _assert_close(npu_weights, cpu_weights, "one rank", rtol=1e-4)
    assert npu_weights["loss_scale"] == 2.0**32 and npu_weights["good_steps"] == 20
    assert npu_weights["bad_steps"] == 0 and npu_weights["global_step"] == 20


def test_the_steps_fp16_overflow_skips_count_and_the_run_ends_on_its_last_device_loop(
    demo_dir, tmp_path
):
    """At the initial loss scale of 2^32 the NPU's first float16 steps overflow and are skipped
    (the stand-in sees the scaled gradients pass float16's range).  Each skipped step still
    takes its batch and counts: four device loops of 10 end the 40-step run at step 40, with a
    checkpoint at every 10, rather than a loop past the end."""
    trace = tmp_path / "device_loops"
    flags = [*TINY, "--data_dir", demo_dir, "--batch_size", "16", "--max_train_steps", "40"]
    flags += ["--iterations_per_loop", "10", "--display_every", "10"]
    flags += ["--save_checkpoints_steps", "10", "--distribution", "npu", "--precision", "fp16"]
    proc = subprocess.run(
        [sys.executable, "run_train.py", *flags, "--log_dir", str(tmp_path / "npu")],
        env=standin_environment(
            RANK_ID="0", RANK_SIZE="1", NPU_STANDIN_TRACE=str(trace), NPU_STANDIN_FP16_OVERFLOW="1"
        ),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert trace.read_text().split() == ["10"] * 4
    assert f"done: 40 steps, checkpoint {tmp_path / 'npu' / 'model.ckpt-40'}" in proc.stdout
    steps = [int(m) for m in re.findall(r"step:\s+(\d+) ", proc.stdout)]
    assert steps == [10, 20, 30, 40]
    state = _read(tmp_path / "npu/model.ckpt-40")
    assert state["global_step"] == 40
    assert state["loss_scale"] < 2.0**32, "no step overflowed: the test shows nothing"
    assert state["good_steps"] > 0, "no step was applied"


def _flat_images(shard_writer, folder, colours_and_labels, copies: int = 32) -> str:
    """``copies`` flat 32x32 images of each (colour, label), dealt into one shard per pair: a
    crop or flip of a flat image is the same image, so every batch of a shard is the same."""
    images, labels = [], []
    for _ in range(copies):
        for colour, label in colours_and_labels:
            image = np.empty((32, 32, 3), np.uint8)
            image[:] = colour
            images.append(image)
            labels.append(label)
    shard_writer(str(folder), images, labels, num_shards=len(colours_and_labels), num_classes=10)
    return str(folder)


def test_two_ranks_through_the_launcher_average_their_gradients(shard_writer, train_tiny, tmp_path):
    """Rank 0 reads only images A, rank 1 only images B.  After the first step the momentum
    (the gradient, still undamped) and the weights are the mean of one device's on A and on B,
    and so is the first step's logged loss; both ranks end with the same weights."""
    a, b = ((200, 60, 120), 4), ((30, 180, 90), 7)
    both = _flat_images(shard_writer, tmp_path / "both", [a, b])
    device = [{"device_id": str(i), "rank_id": str(i)} for i in (0, 1)]
    (tmp_path / "2p.json").write_text(json.dumps({"server_list": [{"device": device}]}))
    settings = {"batch_size": 8, "iterations_per_loop": 1, "save_checkpoints_steps": 1}
    settings.update(display_every=1, seed=3)
    flags = [*TINY, "--data_dir", both, "--max_train_steps", "2", "--precision", "fp16"]
    flags += [arg for key, value in settings.items() for arg in (f"--{key}", str(value))]
    proc = subprocess.run(
        [sys.executable, "-m", "vgg_keras.launch", "--npus", "2", "--rank_table"]
        + [str(tmp_path / "2p.json"), "--rank_logs", str(tmp_path / "ranks"), "--"]
        + ["run_train.py", *flags, "--distribution", "npu", "--log_dir", str(tmp_path / "npu")],
        env=standin_environment(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    rank_1 = (tmp_path / "ranks/rank_1/train.log").read_text()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:] + rank_1[-2000:]
    assert "distribution: npu, 2 replicas = 2 worker(s) x 1; this is worker 0" in proc.stdout
    fingerprints = [
        re.findall(r"weights fingerprint (\w+)$", text, re.M) for text in (proc.stdout, rank_1)
    ]
    assert len(fingerprints[0]) == 1 and fingerprints[0] == fingerprints[1]

    alone = []
    for name, pair in (("a", a), ("b", b)):
        data = _flat_images(shard_writer, tmp_path / f"only_{name}", [pair])
        code, _ = train_tiny(
            tmp_path / name, data_dir=data, max_train_steps=1, distribution="none", **settings
        )
        assert code == 0
        alone.append(_read(tmp_path / name / "model.ckpt-1"))
    mean = {name: (alone[0][name] + alone[1][name]) / 2 for name in alone[0]}
    ranks = _read(tmp_path / "npu/model.ckpt-1")
    assert ranks.keys() - mean.keys() == LOSS_SCALE_STATE and ranks["good_steps"] == 1
    momentum = {name: value for name, value in mean.items() if name.endswith("/Momentum")}
    assert momentum and not np.allclose(
        alone[0]["fc1/kernel/Momentum"], mean["fc1/kernel/Momentum"]
    )
    _assert_close(ranks, mean, "two ranks")
    first_loss = [read_metrics(tmp_path / name)[0]["loss"] for name in ("npu", "a", "b")]
    assert first_loss[0] == pytest.approx((first_loss[1] + first_loss[2]) / 2, rel=1e-5)


def test_a_signal_to_one_rank_stops_every_rank_after_the_same_call_and_the_chief_saves(
    demo_dir, tmp_path
):
    """SIGTERM to rank 1 alone (a scheduler preempting one process, a user's kill): the ranks
    vote over HCCL at every session call, so all stop after the same one and rank 0 saves it.
    Alone, rank 1 would leave and rank 0's next all-reduce would lose its partner unsaved."""
    device = [{"device_id": str(i), "rank_id": str(i)} for i in (0, 1)]
    (tmp_path / "2p.json").write_text(json.dumps({"server_list": [{"device": device}]}))
    flags = [*TINY, "--data_dir", demo_dir, "--batch_size", "8", "--max_train_steps", "100000"]
    flags += ["--iterations_per_loop", "5", "--display_every", "5"]
    flags += ["--save_checkpoints_steps", "100000", "--distribution", "npu"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "vgg_keras.launch", "--npus", "2", "--rank_table"]
        + [str(tmp_path / "2p.json"), "--rank_logs", str(tmp_path / "ranks"), "--"]
        + ["run_train.py", *flags, "--log_dir", str(tmp_path / "npu")],
        env=standin_environment(),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        for line in proc.stdout:  # rank 0's output is shown, rank 1's is in its log
            lines.append(line)
            if re.search(r"\[rank 0\] .* step:\s+\d+ ", line):
                break
        pids = [int(p) for p in re.findall(r"\[launch\] rank \d+: pid (\d+)", "".join(lines))]
        assert len(pids) == 2, "".join(lines)
        os.kill(pids[1], signal.SIGTERM)
        output = "".join(lines) + proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rank_1 = (tmp_path / "ranks/rank_1/train.log").read_text()
    chief = re.search(
        r"another worker's signal: stopped at step (\d+), saved (\S+) \(exit 143\)$", output, re.M
    )
    assert chief, output[-3000:] + rank_1[-2000:]
    step, prefix = chief.groups()
    assert f"SIGTERM: stopped at step {step}, the chief saved it (exit 143)" in rank_1
    assert int(step) % 5 == 0 and prefix == str(tmp_path / "npu" / f"model.ckpt-{step}")
    assert tf.train.latest_checkpoint(str(tmp_path / "npu")) == prefix
    for rank in (0, 1):
        assert f"[launch] rank {rank} exited with code 143" in output
