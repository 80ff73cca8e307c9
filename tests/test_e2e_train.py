"""run_train.py as a user runs it: bad flag values (one line, exit 2) and Ctrl-C (a real
subprocess).  The demo run's own tests are in test_e2e_demo.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from vgg_keras import rundir
from vgg_keras.reporting import read_metrics

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--width_multiplier", "0.0625", "--progress", "false", "--mode", "train"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch_size", "0"], "error: --batch_size: must be >= 1, got 0"),
        (["--arch", "vgg12"], "error: --arch: must be one of vgg11, vgg11_bn, vgg13, "),
        (["--lr_values", "0.1,0.01"], "error: --lr_values: needs 4 values for 3 boundaries, got 2"),
        (["--lr_boundaries", "30,10"], "error: --lr_boundaries: must be increasing, got 30,10"),
        (["--lr_boundaries", "0,10"], "error: --lr_boundaries: must be > 0, got 0,10"),
        (
            ["--precision", "fp8"],
            "error: --precision: must be one of fp32, bf16, fp16, got 'fp8'",
        ),
        (
            ["--data_dir", "{tmp}/no_such_folder"],
            "error: data folder not found: {tmp}/no_such_folder",
        ),
    ],
)
def test_bad_values_exit_2_with_one_line_naming_the_flag_or_file(
    script_runner, demo_dir, tmp_path, flags, message
):
    flags = [f.format(tmp=tmp_path) for f in flags]
    log_dir = tmp_path / "run"
    args = ["--preset", "demo", "--data_dir", demo_dir, "--log_dir", log_dir, *TINY, *flags]
    proc = script_runner("run_train.py", *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [proc.stderr.strip()], "one line, no traceback"
    assert proc.stderr.startswith(message.format(tmp=tmp_path))
    assert not rundir.list_checkpoints(str(log_dir))


def test_bf16_under_a_onednn_cap_without_bf16_kernels_is_refused_where_it_would_fail(
    script_runner, tmp_path
):
    """ONEDNN_MAX_CPU_ISA=AVX2 on an AVX-512 CPU: TensorFlow 2 still hands oneDNN the bf16
    convolutions, which then fail at the first step with a oneDNN trace; the run is refused
    with one line instead.  Elsewhere (no AVX-512: Eigen's kernels; TF 1.15) it trains."""
    from vgg_keras import compat

    would_fail = not compat.TF1 and "avx512f" in compat.cpu_flags() and not compat.gpu_count()
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "TF_ENABLE_ONEDNN_OPTS": "1"}
    log_dir = tmp_path / "run"
    args = ["--synthetic", "--preset", "demo", "--max_train_steps", "1", "--log_dir", log_dir]
    proc = script_runner("run_train.py", *args, *TINY, "--precision", "bf16", env=env)
    if would_fail:
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.splitlines() == [
            "error: --precision bf16: ONEDNN_MAX_CPU_ISA=AVX2 leaves oneDNN no bf16 kernels, and "
            "TensorFlow would give it the bf16 ops all the same; unset it, set "
            "TF_ENABLE_ONEDNN_OPTS=0, or use --precision fp32"
        ]
        assert not log_dir.exists()
    else:
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert rundir.list_checkpoints(str(log_dir))


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path):
    log_dir = tmp_path / "run"
    command = [sys.executable, os.path.join(REPO_ROOT, "run_train.py"), "--synthetic"]
    command += ["--image_size", "32", "--class_num", "10", "--batch_size", "8", *TINY]
    command += ["--iterations_per_loop", "1", "--display_every", "1", "--log_dir", str(log_dir)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        metrics = log_dir / "metrics.jsonl"
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
            assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    step = read_metrics(str(log_dir))[-1]["step"]
    assert rundir.latest_checkpoint(str(log_dir)) == str(log_dir / f"model.ckpt-{step}")
    assert stdout.splitlines()[-1].startswith("SIGINT")
    assert f"{log_dir}/model.ckpt-{step}" in stdout.splitlines()[-1]
    assert "Traceback" not in stderr
