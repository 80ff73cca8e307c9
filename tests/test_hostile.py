"""Hostile input through the real command lines (issue 15): user files beside every output,
devices that do not exist, bad validation data, stray shard copies, odd log names, resumes
with a smaller --keep_checkpoint_max.

Every test runs the real scripts in subprocesses on real files.  The network is VGG16 at 1/16
width on 32 px images, as in test_reliability.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_unwritable, make_writable, run_script

from vgg_keras import compat, rundir

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--arch", "vgg16", "--width_multiplier", "0.0625", "--image_size", "32"]
TINY += ["--class_num", "10", "--batch_size", "8", "--progress", "false"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def cli(script: str, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    """One of the repository's run_*.py programs (conftest.run_script: in this process unless
    it sets up the process), or ``-m module`` in a fresh Python."""
    if script != "-m":
        return run_script(script, *args, timeout=timeout)
    command = [sys.executable, "-m", *map(str, args)]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=ENV
    )


def steps(log_dir) -> list[int]:
    return [rundir.checkpoint_step(p) for p in rundir.list_checkpoints(str(log_dir))]


def train_args(data_dir, log_dir, *extra) -> list[str]:
    return [*TINY, "--data_dir", data_dir, "--log_dir", log_dir, "--mode", "train", *extra]


def error_line(proc: subprocess.CompletedProcess, code: int) -> str:
    """The one ``error: ...`` line of a run that had to stop with ``code``, no traceback."""
    out = f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == code, out
    assert "Traceback" not in proc.stderr, out
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), out
    return lines[-1]


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    out = f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, out
    assert "Traceback" not in proc.stderr, out
    return proc


@pytest.fixture(scope="module")
def run20(demo_dir, tmp_path_factory) -> Path:
    """A 20-step run of the tiny network on the demo data (checkpoints at 10 and 20)."""
    log_dir = tmp_path_factory.mktemp("run20")
    extra = ["--max_train_steps", "20", "--save_checkpoints_steps", "10"]
    ok(cli("run_train.py", *train_args(demo_dir, log_dir, *extra)))
    return log_dir


# ---------------------------------------------------------------------------------------------
# 1. Export: never delete what the program did not create


def test_export_keeps_a_users_folder_named_like_its_staging(run20, tmp_path):
    out = tmp_path / "X"
    mine = tmp_path / "X.tmp"
    mine.mkdir()
    (mine / "thesis.txt").write_text("x")
    ok(cli("run_export.py", "--ckpt", run20, "--format", "checkpoint", "--output", out))
    assert (mine / "thesis.txt").read_text() == "x"
    assert (out / "export_info.json").is_file()
    # nothing else appeared beside the output: the staging folder is gone
    assert sorted(os.listdir(tmp_path)) == ["X", "X.tmp"]

    # <output>.tmp a file of the user's: no traceback, the file stays
    (tmp_path / "Y.tmp").write_text("y")
    ok(cli("run_export.py", "--ckpt", run20, "--format", "checkpoint", "--output", tmp_path / "Y"))
    assert (tmp_path / "Y.tmp").read_text() == "y"

    # --output a symlink to an empty folder: the export lands in that folder
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "linkout").symlink_to(target)
    link = tmp_path / "linkout"
    ok(cli("run_export.py", "--ckpt", run20, "--format", "checkpoint", "--output", link))
    assert (target / "export_info.json").is_file()
    assert not (tmp_path / "linkout.tmp").exists()


def test_export_into_a_read_only_parent_is_one_line(run20, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    make_unwritable(parent)
    try:
        proc = cli(
            "run_export.py", "--ckpt", run20, "--format", "checkpoint", "--output", parent / "X"
        )
    finally:
        make_writable(parent)
    line = error_line(proc, 2)
    assert f"--output {parent / 'X'}: cannot write there" in line


# ---------------------------------------------------------------------------------------------
# 2. Devices that do not exist: one line before anything is built, never a hang


@pytest.mark.parametrize("devices", ["gpu:0,gpu:1", "gpu:7", "cpu:0,cpu:2", "cpu:0,cpu:0"])
def test_devices_that_do_not_exist_are_refused_at_once(demo_dir, tmp_path, devices):
    if compat.gpu_count() > 7:
        pytest.skip("this machine has the GPUs the test names")
    args = train_args(demo_dir, tmp_path / "run", "--max_train_steps", "2")
    proc = cli("run_train.py", *args, "--devices", devices, timeout=120)
    line = error_line(proc, 2)
    assert line.startswith("error: --devices: "), line
    assert not list((tmp_path / "run").glob("model.ckpt-*"))


# ---------------------------------------------------------------------------------------------
# 6. --keep_checkpoint_max holds after a resume


def test_keep_checkpoint_max_holds_after_a_resume_with_fewer(run20, demo_dir, tmp_path):
    log_dir = tmp_path / "run"
    shutil.copytree(run20, log_dir)
    # as if kill -9 cycles had left more checkpoints than the run keeps
    for step in (3, 5):
        for path in run20.glob("model.ckpt-10.*"):
            shutil.copy(path, log_dir / path.name.replace("-10.", f"-{step}."))
    assert steps(log_dir) == [3, 5, 10, 20]
    args = train_args(demo_dir, log_dir, "--max_train_steps", "22", "--save_checkpoints_steps", "1")
    ok(cli("run_train.py", *args, "--keep_checkpoint_max", "1"))
    assert steps(log_dir) == [22]
    assert not [p for p in log_dir.glob("model.ckpt-*") if not p.name.startswith("model.ckpt-22.")]


# ---------------------------------------------------------------------------------------------
# 4. Stray copies of shards are not read


def _other_data_results(output, data_dir) -> list[dict]:
    """The results of an evaluation on other data than the run's: eval_results.data-<name>.json
    (the run's own eval_results.json is left alone)."""
    assert not (Path(output) / "eval_results.json").exists()
    return json.loads((Path(output) / f"eval_results.data-{Path(data_dir).name}.json").read_text())


def _eval_images(run20, data_dir, output) -> tuple[int, str]:
    proc = ok(cli("run_eval.py", "--ckpt", run20, "--data_dir", data_dir, "--output", output))
    return _other_data_results(output, data_dir)[-1]["images"], proc.stderr


@pytest.mark.parametrize("with_info", [True, False], ids=["info", "no_info"])
def test_stray_copies_of_validation_shards_are_ignored_and_named(
    run20, demo_dir, tmp_path, with_info
):
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    if not with_info:  # TF-slim's shards as they are: no manifest, no writer's state
        (data / "dataset_info.json").unlink()
        shutil.rmtree(data / ".convert")
    for stray in ("validation-00000-of-00002.bak", "validation-00000-of-00002 (copy)"):
        shutil.copy(data / "validation-00000-of-00002", data / stray)
    images, stderr = _eval_images(run20, data, tmp_path / "eval")
    assert images == 360
    assert "ignored validation-00000-of-00002 (copy), validation-00000-of-00002.bak" in stderr


# ---------------------------------------------------------------------------------------------
# 3. Bad validation data: the file and record in one line, or skipped with --skip_corrupt


def _bad_validation(folder: Path, shard_writer, jpeg_encoder) -> Path:
    """The demo's kind of data, 24 validation records in 2 shards, record 5 no JPEG."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(24)]
    labels = [k % 10 + 1 for k in range(24)]
    shard_writer(str(folder), images, labels, split="train", num_classes=10)
    broken = [b"these bytes are no JPEG" if k == 5 else im for k, im in enumerate(images)]
    shard_writer(str(folder), broken, labels, split="validation", num_shards=2, num_classes=10)
    return folder


def test_bad_validation_data_is_one_line_or_skipped(run20, shard_writer, jpeg_encoder, tmp_path):
    data = _bad_validation(tmp_path / "garbage", shard_writer, jpeg_encoder)
    out = tmp_path / "eval"
    proc = cli("run_eval.py", "--ckpt", run20, "--data_dir", data, "--output", out)
    line = error_line(proc, 2)
    assert line.startswith(f"error: {data}/validation-00001-of-00002: record 2: "), line
    assert line.endswith("(use --skip_corrupt to skip bad records)"), line

    skipped = ok(
        cli("run_eval.py", "--ckpt", run20, "--data_dir", data, "--output", out, "--skip_corrupt")
    )
    assert _other_data_results(out, data)[-1]["images"] == 23, skipped.stdout

    # a truncated validation shard (dataset_info.json knows its count)
    (data / "validation-00001-of-00002").write_bytes(b"")
    with open(data / "validation-00000-of-00002", "r+b") as f:
        f.truncate(os.path.getsize(f.name) - 100)
    proc = cli("run_eval.py", "--ckpt", run20, "--data_dir", data, "--output", out)
    line = error_line(proc, 2)
    assert line.startswith(f"error: {data}/validation-00000-of-00002: "), line
    assert " bytes, dataset_info.json lists " in line, line  # not the shard that was written


def test_bad_validation_data_in_train_and_evaluate_is_one_line(
    shard_writer, jpeg_encoder, tmp_path
):
    data = _bad_validation(tmp_path / "garbage", shard_writer, jpeg_encoder)
    log_dir = tmp_path / "run"
    args = train_args(data, log_dir, "--mode", "train_and_evaluate", "--max_train_steps", "3")
    proc = cli("run_train.py", *args)
    line = error_line(proc, 2)
    assert f"{data}/validation-00001-of-00002: record 2: " in line, line
    assert steps(log_dir) == [3]  # the checkpoint it evaluated is kept


# ---------------------------------------------------------------------------------------------
# 7. Unwritable places: one line, never a traceback


def test_eval_of_a_read_only_run_folder_is_one_line(run20, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run20, run)
    make_unwritable(run)
    try:
        proc = cli("run_eval.py", "--ckpt", run)
    finally:
        make_writable(run)
    line = error_line(proc, 2)
    assert f"to {run} (" in line and "--output" in line, line


def test_training_started_on_a_full_disk_is_one_line(demo_dir, small_tmpfs):
    volume = small_tmpfs(64 * 1024)
    filler = os.open(volume / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(filler, b"\0" * 4096)
    except OSError:  # full
        pass
    finally:
        os.close(filler)
    log_dir = volume / "run"
    proc = cli("run_train.py", *train_args(demo_dir, log_dir, "--max_train_steps", "2"))
    line = error_line(proc, 1)
    assert "No space left on device" in line, line
    assert not (log_dir / "train.lock").exists()


# ---------------------------------------------------------------------------------------------
# 8. --log_name cannot be one of the run's own files; 11. up-front checks


@pytest.mark.parametrize(
    "name", ["config.json", "metrics.jsonl", "checkpoint", "model.ckpt-5.index", "a/b.log", ".."]
)
def test_log_name_that_collides_with_the_runs_files_is_refused(demo_dir, tmp_path, name):
    log_dir = tmp_path / "run"
    proc = cli("run_train.py", *train_args(demo_dir, log_dir, "--log_name", name), timeout=60)
    assert error_line(proc, 2).startswith("error: --log_name: "), proc.stderr
    assert not log_dir.exists()


def test_run_files_list_names_what_the_modules_write():
    from vgg_keras import runlock

    own = [rundir.CONFIG_FILE, rundir.METRICS_FILE, runlock.LOCK_FILE, rundir.STATE_FILE]
    own += [rundir.BEST_FILE, rundir.EVAL_LOG, rundir.EVAL_EVENTS, "events.out.tfevents.1"]
    own += [rundir.checkpoint_prefix("", 5) + ".index"]
    for tag in ("", "crops10", "resize-square"):
        own += [rundir.results_name(tag), rundir.results_name(tag, ".csv"), rundir.curve_name(tag)]
        own += [rundir.per_class_name(5, tag) + ".per_class.csv"]
    assert [name for name in own if not rundir.is_own_name(name)] == []
    assert not [name for name in ("train.log", "notes.txt", "eval.txt") if rundir.is_own_name(name)]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lr", "inf"], "error: --lr: must be a finite number, got inf"),
        (["--momentum", "inf"], "error: --momentum: must be a finite number, got inf"),
        (["--lr", "0"], "error: --lr: must be > 0, got 0"),
        (["--class_num", "5"], "error: --class_num 5: the dataset in {} has 10 classes"),
    ],
)
def test_bad_values_are_refused_before_training(demo_dir, tmp_path, flags, message):
    args = [a for a in train_args(demo_dir, tmp_path / "run") if a not in ("--class_num", "10")]
    proc = cli("run_train.py", *args, *flags, timeout=60)
    assert error_line(proc, 2).startswith(message.format(demo_dir)), proc.stderr


def test_class_num_defaults_to_the_datasets(demo_dir, tmp_path):
    log_dir = tmp_path / "run"
    args = [a for a in train_args(demo_dir, log_dir) if a not in ("--class_num", "10")]
    ok(cli("run_train.py", *args, "--max_train_steps", "1"))
    assert json.loads((log_dir / "config.json").read_text())["class_num"] == 10


# ---------------------------------------------------------------------------------------------
# No command deletes what it did not create; --overwrite deletes only the run's own files


def _plant(folder: Path, names: list[str]) -> dict[Path, str]:
    """A user's files (a name ending in /: a folder with a file) beside the outputs."""
    planted = {}
    for name in names:
        path = folder / name
        if name.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            path = path / "thesis.txt"
        path.write_text(f"mine: {name}")
        planted[path] = f"mine: {name}"
    return planted


def _survived(planted: dict[Path, str]) -> None:
    lost = [str(p) for p, text in planted.items() if not p.is_file() or p.read_text() != text]
    assert not lost, lost


def test_user_files_beside_every_output_survive_every_command(run20, demo_dir, tmp_path):
    run, data, out = tmp_path / "run", tmp_path / "data", tmp_path / "out"
    shutil.copytree(run20, run)
    shutil.copytree(demo_dir, data)
    out.mkdir()
    planted = _plant(run, ["model.ckpt-best.txt", "config.json.tmp", "train.log.tmp", "notes"])
    planted.update(_plant(run, ["eval_results.json.tmp/", "checkpoint.tmp/", ".config.json.x/"]))
    planted.update(_plant(data, ["train-00000-of-00004.tmp", "dataset_info.json.tmp"]))
    planted.update(_plant(data, ["labels.txt.tmp/", "validation-00000-of-00002.tmp/"]))
    planted.update(_plant(out, ["X.tmp/", "X.tmp.txt", ".X.tmp"]))

    ok(cli("run_train.py", *train_args(data, run, "--max_train_steps", "22")))
    ok(cli("run_eval.py", "--ckpt", run, "--data_dir", data))
    ok(cli("run_export.py", "--ckpt", run, "--format", "checkpoint", "--output", out / "X"))
    ok(cli("-m", "vgg_keras.data.demo", data))
    _survived(planted)
    assert (run / "eval_results.json").is_file()

    overwrite = train_args(data, run, "--max_train_steps", "2", "--overwrite")
    ok(cli("run_train.py", *overwrite))
    _survived(planted)
    # the previous run's evaluation went with it
    assert not (run / "eval_results.json").exists()
    assert steps(run) == [2]


def test_wrong_width_names_the_widths(run20):
    proc = cli("run_eval.py", "--ckpt", run20, "--width_multiplier", "0.125")
    line = error_line(proc, 2)
    assert (
        "checkpoint has vgg16 at width 0.0625 with 10 classes, model is vgg16 at width 0.125"
        in line
    )


# ---------------------------------------------------------------------------------------------
# 5. Prediction reads BMP (and PNG) files; one unreadable file does not stop the others


def test_predict_reads_bmp_and_skips_an_unreadable_file(run20, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(pixels).save(folder / "a.bmp")
    Image.fromarray(pixels).save(folder / "b.png")
    Image.fromarray(pixels).save(folder / "c.jpg", quality=95)
    (folder / "d.jpg").write_text("not a picture")
    proc = cli("run_predict.py", folder, "--ckpt", run20, "--json")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    found = json.loads(proc.stdout)
    assert [Path(r["file"]).name for r in found] == ["a.bmp", "b.png", "c.jpg"]
    assert f"skipped: {folder / 'd.jpg'}: not an image the decoder reads" in proc.stderr


# ---------------------------------------------------------------------------------------------
# 12. A signal during an in-training evaluation stops it at its next batch


def test_sigterm_during_an_evaluation_stops_it_at_the_next_batch(demo_dir, tmp_path):
    log_dir = tmp_path / "run"
    args = train_args(demo_dir, log_dir, "--mode", "train_and_evaluate", "--max_train_steps", "50")
    # an evaluation after 9 steps, one image per batch: 360 session calls, a second or more
    args += ["--epochs_between_evals", "0.05", "--eval_batch_size", "1"]
    args += ["--save_checkpoints_steps", "1000"]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run_train.py"), *map(str, args)],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(log_dir.glob("model.ckpt-*.index")) and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stdout + stderr
    (prefix,) = rundir.list_checkpoints(str(log_dir))
    assert f"SIGTERM: stopped at step {rundir.checkpoint_step(prefix)}" in stdout, stdout
    # the evaluation was cut short: no result of it was reported
    metrics = [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]
    assert not [m for m in metrics if "eval_top1" in m], stdout


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (Linux /proc)."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(c) for c in f.read().split()]
    return found


def _interrupt_converter(src: Path, out: Path, ready) -> subprocess.CompletedProcess:
    """Run the converter with 2 workers as a shell job, Ctrl-C its process group (what a
    terminal does) once ``ready(pid)`` holds, and return how it ended."""
    command = [sys.executable, "-m", "vgg_keras.data.convert", src, out, "--train_shards", "4"]
    proc = subprocess.Popen(
        list(map(str, [*command, "--workers", "2"])), cwd=ROOT, env=ENV, text=True,
        start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not ready(proc.pid):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("when", ["workers_starting", "shard_half_written"])
def test_ctrl_c_in_the_converter_prints_one_line_and_leaves_no_staging_folder(tmp_path, when):
    from PIL import Image

    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    count, side = (16, 24) if when == "workers_starting" else (400, 160)
    for k in range(count):
        rel = f"train/{'ab'[k % 2]}/{k}.JPEG"
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(src / rel)
    out = tmp_path / "out"

    def staging() -> list[str]:
        return [n for n in os.listdir(out) if n.endswith(".tmp")] if out.exists() else []

    if when == "workers_starting":  # both workers exist and are importing TensorFlow
        seen = []

        def workers_starting(pid: int) -> bool:
            # 0.3 s after both appear: the converter has spawned them (it ignores Ctrl-C for
            # those few milliseconds) and they are still importing TensorFlow (seconds)
            if not seen and len(_children(pid)) >= 2:
                seen.append(time.monotonic())
            return bool(seen) and time.monotonic() > seen[0] + 0.3

        proc = _interrupt_converter(src, out, workers_starting)
    else:  # a worker is writing a shard into its staging folder
        proc = _interrupt_converter(src, out, lambda pid: bool(staging()))
    assert proc.returncode == 130, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "interrupted: finished shards are kept; run again to resume"
    ), proc.stderr
    assert staging() == []  # the workers removed what they had half written
    # Run again, in one process (the workers' count is not the dataset's): it completes.
    ok(cli("-m", "vgg_keras.data.convert", src, out, "--train_shards", "4", "--workers", "1"))
    assert json.loads((out / "dataset_info.json").read_text())["splits"] == {"train": count}


# ---------------------------------------------------------------------------------------------
# 10. The converter takes images in nested folders of a class


def test_converter_takes_images_in_nested_class_folders(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    for rel in ("train/a/1.JPEG", "train/a/sub/2.JPEG", "train/a/sub/deeper/3.JPEG",
                "train/b/4.JPEG", "val/a/5.JPEG", "val/b/x/6.JPEG"):  # fmt: skip
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(src / rel, format="JPEG")
    out = tmp_path / "out"
    flags = ["--train_shards", "1", "--validation_shards", "1", "--workers", "1"]
    ok(cli("-m", "vgg_keras.data.convert", src, out, *flags))
    meta = json.loads((out / "dataset_info.json").read_text())
    assert meta["splits"] == {"train": 4, "validation": 2}
    assert meta["num_classes"] == 2


# ---------------------------------------------------------------------------------------------
# 9. Truncated shards: --skip_corrupt counts what was lost; the converter rewrites them


def _truncate_half(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


@pytest.mark.parametrize("with_info", [True, False], ids=["info", "no_info"])
def test_truncated_training_shard_under_skip_corrupt_counts_lost_records(
    demo_dir, tmp_path, with_info
):
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    if not with_info:  # TF-slim's shards as they are: no manifest, no writer's state
        (data / "dataset_info.json").unlink()
        shutil.rmtree(data / ".convert")
    _truncate_half(data / "train-00001-of-00004")
    args = train_args(data, tmp_path / "run", "--max_train_steps", "2", "--skip_corrupt")
    proc = ok(cli("run_train.py", *args))
    count = int(re.search(r"--skip_corrupt: (\d+) unusable training record", proc.stdout)[1])
    if with_info:  # the shard held ~360 records; about half were lost
        assert 150 < count < 210, proc.stdout
    else:  # what a truncated file lost cannot be known without the info file: at least one
        assert count >= 1


def test_converter_rerun_rewrites_a_truncated_shard(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    for k in range(12):
        rel = f"train/{'ab'[k % 2]}/{k}.JPEG"
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(src / rel)
    out = tmp_path / "out"
    flags = ["--train_shards", "2", "--workers", "1"]
    ok(cli("-m", "vgg_keras.data.convert", src, out, *flags))
    shard = out / "train-00001-of-00002"
    whole = shard.read_bytes()
    _truncate_half(shard)
    ok(cli("-m", "vgg_keras.data.convert", src, out, *flags))
    assert shard.read_bytes() == whole


# ---------------------------------------------------------------------------------------------
# Documents and checkpoints that are not what they claim: one line, never a traceback


def test_a_settings_file_of_unfolding_yaml_aliases_is_one_line(demo_dir, tmp_path):
    from test_documents import alias_bomb

    (tmp_path / "bomb.yaml").write_text(alias_bomb())
    proc = cli(
        "run_train.py", *train_args(demo_dir, tmp_path / "run"), "--config", tmp_path / "bomb.yaml"
    )
    assert "over 1,000,000 values" in error_line(proc, 2)


def test_a_lock_file_holding_null_is_taken_over(demo_dir, tmp_path):
    log_dir = tmp_path / "run"
    log_dir.mkdir()
    (log_dir / "train.lock").write_text("null")
    ok(cli("run_train.py", *train_args(demo_dir, log_dir, "--max_train_steps", "2")))
    assert steps(log_dir) == [2]


def test_a_cosine_longer_than_any_run_is_refused_at_once(demo_dir, tmp_path):
    args = train_args(demo_dir, tmp_path / "run", "--lr_schedule", "cosine_epoch")
    proc = cli("run_train.py", *args, "--T_max", "1e10", timeout=60)
    assert error_line(proc, 2) == "error: --T_max: must be <= 100000, got 1e+10"


def test_a_checkpoint_with_a_kernel_of_another_rank_is_one_line(run20, demo_dir, tmp_path):
    from vgg_keras.compat import tf, v1

    reader = tf.train.load_checkpoint(str(run20 / "model.ckpt-20"))
    with tf.Graph().as_default(), v1.Session() as session:
        stored = []
        for name in reader.get_variable_to_shape_map():
            value = reader.get_tensor(name)
            stored.append(
                v1.Variable(np.float32(1) if name == "predictions/kernel" else value, name=name)
            )
        session.run(v1.global_variables_initializer())
        v1.train.Saver(stored).save(session, str(tmp_path / "model.ckpt"), global_step=20)
    wanted = f"error: {tmp_path / 'model.ckpt-20'}: not a VGG checkpoint (predictions/kernel has the shape [])"
    for script, args in [
        ("run_eval.py", ["--ckpt", tmp_path / "model.ckpt-20", "--data_dir", demo_dir]),
        ("run_export.py", ["--ckpt", tmp_path / "model.ckpt-20", "--output", tmp_path / "out"]),
        (
            "run_train.py",
            train_args(demo_dir, tmp_path / "go_on", "--resume", tmp_path / "model.ckpt-20"),
        ),
    ]:
        assert error_line(cli(script, *args), 2) == wanted, script


def test_a_start_whose_weights_cannot_be_downloaded_leaves_the_run_folder_unwritten(
    demo_dir, tmp_path
):
    """--preset finetune downloads keras.applications' weights: here the download fails at
    once (a proxy on a closed local port, an empty Keras cache), before anything is written."""
    log_dir = tmp_path / "run"
    offline = {**ENV, "HOME": str(tmp_path), "https_proxy": "http://127.0.0.1:9"}
    offline["HTTPS_PROXY"] = offline["https_proxy"]
    args = ["--preset", "finetune", "--data_dir", demo_dir, "--log_dir", log_dir]
    proc = run_script("run_train.py", *args, "--max_train_steps", "2", env=offline)
    assert "--weights imagenet: cannot download" in error_line(proc, 2)
    assert (sorted(os.listdir(log_dir)) if log_dir.exists() else []) == []
