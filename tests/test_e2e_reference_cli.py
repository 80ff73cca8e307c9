"""The command lines of the reference's users and of the project's quick start (issue 14), run as
they are typed: real subprocesses of run_*.py, make and python -m, in a scratch folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import PROGRAMS, run_in_process, stack_neutral

from vgg_keras import results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = results.HEADER.split()  # step epoch top1 % top5 % loss checkpoint_time(UTC)
TINY = ["--width_multiplier", "0.0625", "--image_size", "32", "--class_num", "10"]
TINY += ["--batch_size", "8", "--progress", "false"]


def run(*command: str, cwd=ROOT, timeout: float = 300, env=None) -> subprocess.CompletedProcess:
    """``command`` in ``cwd`` with this interpreter for python and run_*.py, the repository
    importable.  A run_*.py without ``env`` is its program's ``main(argv)`` in this process,
    as conftest's ``run_script``: TensorFlow starts once per file, not once per command."""
    command = [str(c) for c in command]
    if command[0] in PROGRAMS and env is None:
        return run_in_process(command[0], *command[1:], cwd=str(cwd))
    if command[0].endswith(".py"):
        command = [sys.executable, os.path.join(ROOT, command[0]), *command[1:]]
    elif command[0] == "python":
        command = [sys.executable, *command[1:]]
    env = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
    return subprocess.run(
        command, cwd=str(cwd), env=env, capture_output=True, text=True, timeout=timeout
    )


def table_steps(stdout: str) -> list[int]:
    """The steps of the evaluation table's rows in ``stdout``."""
    lines = stdout.splitlines()
    start = [i for i, line in enumerate(lines) if line.split() == HEADER]
    assert len(start) == 1, stdout
    return [
        int(line.split()[0])
        for line in lines[start[0] + 1 :]
        if len(line.split()) == 7 and line.split()[0].isdigit()
    ]


def make(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    """make with this interpreter, never (re)installing a virtualenv.

    Both stamps are marked old: under `make test TF=1.15` the child make inherits TF=1.15 through
    MAKEFLAGS and so depends on .venv-tf115's stamp, not .venv's.
    """
    stamps = ("-o", ".venv/.installed", "-o", ".venv-tf115/.installed")
    proc = run("make", *stamps, f"PY={sys.executable}", *args, cwd=cwd)
    assert "pip install" not in proc.stdout, proc.stdout
    return proc


# ---------------------------------------------------------------------------------------------
# run_eval.py: which checkpoints


def test_all_ckpts_alone_evaluates_every_checkpoint_of_the_newest_run(eval_run, tmp_path):
    older, newer = tmp_path / "runs" / "older", tmp_path / "runs" / "newer"
    shutil.copytree(eval_run, older)
    shutil.copytree(eval_run, newer)
    for path in older.iterdir():
        os.utime(path, (1e9, 1e9))  # 2001
    proc = run("run_eval.py", "--all-ckpts", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "evaluating runs/newer: the newest run under runs/" in proc.stdout
    assert "--eval_dir DIR" in proc.stdout
    assert table_steps(proc.stdout) == [50, 100, 150]
    assert (newer / "eval_results.json").exists() and not (older / "eval_results.json").exists()


def test_all_ckpts_without_any_run_says_how_to_name_one(tmp_path):
    proc = run("run_eval.py", "--all-ckpts", cwd=tmp_path)
    assert proc.returncode == 2
    assert "no run with checkpoints under runs/" in proc.stderr and "--eval_dir" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_eval_dir_means_every_checkpoint_in_it(eval_run, tmp_path):
    proc = run("run_eval.py", "--eval_dir", eval_run, "--output", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert table_steps(proc.stdout) == [50, 100, 150]
    # --ckpt DIR stays "the newest checkpoint" (every one with --all-ckpts).
    proc = run("run_eval.py", "--ckpt", eval_run, "--output", tmp_path)
    assert table_steps(proc.stdout) == [150]


def test_make_eval_evaluates_the_run_make_train_wrote():
    def command(target: str, *args: str) -> str:
        proc = make("-n", target, *args)
        assert proc.returncode == 0, proc.stderr
        return " ".join(proc.stdout.replace("\\\n", " ").split())

    for data in ([], ["DATA=/x"]):
        train, evaluate = command("train", *data), command("eval", *data)
        log_dir = train.split("--log_dir ")[1].split()[0]
        assert f"run_eval.py --eval_dir {log_dir} " in evaluate + " ", (train, evaluate)
    assert "runs/vgg16" in command("eval", "DATA=/x")
    # A run folder or one checkpoint, in a bucket as on disk.
    for ckpt, flag in [
        ("gs://b/run", "--eval_dir"),
        ("gs://b/run/model.ckpt-40", "--ckpt"),
        ("runs/x/model.ckpt-4", "--ckpt"),
    ]:
        assert f"run_eval.py {flag} {ckpt} " in command("eval", f"CKPT={ckpt}") + " "
    # Each stack its own default run folder: a TF 2 run would be resumed, not started, by 1.15.
    assert "--log_dir runs/demo " in command("train", "TF=2") + " "
    assert "--log_dir runs/demo-tf115 " in command("train", "TF=1.15") + " "
    assert "runs/vgg16-tf115" in command("eval", "TF=1.15", "DATA=/x")


@pytest.mark.slow
def test_run_eval_all_ckpts_after_make_train_prints_every_kept_checkpoint(demo_dir, tmp_path):
    """The quick start as typed, in a scratch copy of the repository's top level."""
    for name in ("Makefile", "run_train.py", "run_eval.py", "vgg_keras"):
        os.symlink(os.path.join(ROOT, name), tmp_path / name)
    (tmp_path / "data").mkdir()
    os.symlink(demo_dir, tmp_path / "data" / "demo")
    args = "--width_multiplier 0.0625 --max_train_steps 60 --save_checkpoints_steps 10"
    # TF=2 here: under `make test TF=1.15` the child make would inherit that stack's folder.
    proc = make(
        "train", "TF=2", f"ARGS={args} --keep_checkpoint_max 3 --progress false", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    proc = run("python", "run_eval.py", "--all-ckpts", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "evaluating runs/demo" in proc.stdout
    assert table_steps(proc.stdout) == [40, 50, 60]
    results = json.loads((tmp_path / "runs" / "demo" / "eval_results.json").read_text())
    assert [r["step"] for r in results] == [40, 50, 60]


def test_eval_resize_square_through_run_eval(eval_run, tmp_path):
    proc = run("run_eval.py", "--ckpt", eval_run, "--eval_resize", "square", "--output", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "after the square resize" in proc.stdout and table_steps(proc.stdout) == [150]
    proc = run("run_eval.py", "--ckpt", eval_run, "--eval_resize", "squash")
    assert proc.returncode == 2 and "--eval_resize" in proc.stderr


# ---------------------------------------------------------------------------------------------
# run_train.py: the reference's spellings, a settings file, the loop-length warning


@pytest.fixture(scope="module")
def reference_run(demo_dir, tmp_path_factory):
    """run_train.py as the reference's users spell it, reading part of its settings from a
    YAML-free JSON --config file: (folder, the process)."""
    folder = tmp_path_factory.mktemp("reference_run")
    settings = folder / "settings.json"
    settings.write_text(json.dumps({"lr": 0.02, "max_train_steps": 4, "dtype_is_not": 1}))
    bad = run("run_train.py", "--config", settings, f"--datadir={demo_dir}")
    settings.write_text(json.dumps({"lr": 0.02, "max_train_steps": 4, "batch_size": "8"}))
    proc = run(
        "run_train.py", f"--datadir={demo_dir}", "--dtype=tf.float32", "--config", settings,
        "--log_dir", folder / "run", "--display_every", "1", "--iterations_per_loop", "4",
        "--restore_exclude", "['predictions']", *TINY[:6], "--progress", "false",
    )  # fmt: skip
    return folder, proc, bad


def test_reference_spellings_and_a_config_file_through_run_train(reference_run, demo_dir):
    folder, proc, bad = reference_run
    assert bad.returncode == 2 and "unknown setting 'dtype_is_not'" in bad.stderr
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    written = json.loads((folder / "run" / "config.json").read_text())
    assert written["data_dir"] == demo_dir and written["precision"] == "fp32"
    assert (written["lr"], written["max_train_steps"], written["batch_size"]) == (0.02, 4, 8)
    # The reference's default mode: train_and_evaluate.
    assert written["mode"] == "train_and_evaluate"


def test_display_every_below_the_loop_length_is_warned_once(reference_run):
    _, proc, _ = reference_run
    warnings = [line for line in proc.stdout.splitlines() if "--display_every 1 <" in line]
    assert len(warnings) == 1 and "--iterations_per_loop 4" in warnings[0], proc.stdout


@stack_neutral  # config.json read back: Python
def test_a_run_repeats_from_another_runs_config_json(reference_run):
    folder, _, _ = reference_run
    first = folder / "run" / "config.json"
    proc = run("run_train.py", "--config", first, "--log_dir", folder / "again")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    again = json.loads((folder / "again" / "config.json").read_text())
    settings = json.loads(first.read_text())
    assert again["run"]["id"] != settings["run"]["id"]  # another run, of the same settings
    assert again == {**settings, "log_dir": str(folder / "again"), "run": again["run"]}
    assert again["run"] == {**settings["run"], "id": again["run"]["id"]}


# ---------------------------------------------------------------------------------------------
# python -m vgg_keras.launch --npus N: the reference's one process per Ascend device

SHOW_RANK = """import json, os, sys
keys = ("RANK_ID", "RANK_SIZE", "RANK_TABLE_FILE", "DEVICE_ID", "ASCEND_DEVICE_ID")
print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), **{k: os.environ.get(k) for k in keys}}))
"""


def rank_table(path, devices) -> str:
    """An HCCL rank table of one server in the reference's 8p.json layout."""
    device = [
        {"device_id": str(d), "device_ip": f"192.168.{i}.1", "rank_id": str(i)}
        for i, d in enumerate(devices)
    ]
    table = {"server_count": "1", "server_list": [{"device": device, "server_id": "10.0.0.1"}]}
    path.write_text(json.dumps(table))
    return str(path)


def test_npu_launch_gives_each_rank_its_environment_and_log_folder(tmp_path):
    (tmp_path / "run_train.py").write_text(SHOW_RANK)  # stands in for training: shows what it got
    table = rank_table(tmp_path / "2p.json", [4, 5])
    proc = run(
        "python", "-m", "vgg_keras.launch", "--npus", "2", "--rank_table", "2p.json",
        "--", "run_train.py", "--data_dir", "/d", cwd=tmp_path, env={"RANK_TABLE_FILE": ""},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[launch] all 2 ranks finished" in proc.stdout
    seen = []
    for rank in range(2):
        log = tmp_path / "rank_logs" / f"rank_{rank}" / "train.log"
        seen.append(json.loads(log.read_text()))
    assert [(s["RANK_ID"], s["DEVICE_ID"], s["ASCEND_DEVICE_ID"]) for s in seen] == [
        ("0", "4", "4"),
        ("1", "5", "5"),
    ]
    assert {s["RANK_SIZE"] for s in seen} == {"2"} and {s["RANK_TABLE_FILE"] for s in seen} == {
        table
    }
    assert seen[0]["argv"] == ["--data_dir", "/d", "--rank_size", "2"]
    assert seen[0]["cwd"] == str(tmp_path)
    assert '"RANK_ID": "0"' in proc.stdout and '"RANK_ID": "1"' not in proc.stdout  # rank 0 shown


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--npus", "8"], "--npus 8: give --rank_table FILE"),
        (
            ["--npus", "8", "--rank_table", "missing.json"],
            "--rank_table missing.json: no such file",
        ),
        (["--npus", "8", "--rank_table", "2p.json"], "--npus 8: 2p.json lists ranks [0, 1]"),
        (["--npus", "2", "--rank_table", "bad.json"], "not an HCCL rank table"),
        (["--npus", "2", "--rank_table", "deep.json"], "deep.json: unreadable HCCL rank table"),
    ],
)
def test_npu_launch_refuses_without_a_fitting_rank_table(tmp_path, args, message):
    rank_table(tmp_path / "2p.json", [0, 1])
    (tmp_path / "bad.json").write_text("{}")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "run_train.py").write_text(SHOW_RANK)
    proc = run(
        "python", "-m", "vgg_keras.launch", *args, "--", "run_train.py",
        cwd=tmp_path, env={"RANK_TABLE_FILE": ""},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert not (tmp_path / "rank_logs").exists()


# ---------------------------------------------------------------------------------------------
# pip install: the console scripts; the Python API


def test_console_scripts_after_pip_install(eval_run, tmp_path):
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 61:
        pytest.skip("setuptools < 61 cannot build from pyproject.toml's [project] table")
    source, target = tmp_path / "src", tmp_path / "site"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "vgg_keras"):
        copy = shutil.copytree if name == "vgg_keras" else shutil.copy
        copy(os.path.join(ROOT, name), source / name)
    proc = run(
        "python", "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
        "--no-index", "--target", target, source,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    env = {"PYTHONPATH": str(target)}  # the installed copy, not the repository
    for name in ("vgg-train", "vgg-export", "vgg-predict"):
        proc = run(target / "bin" / name, "--help", env=env, cwd=tmp_path)
        assert proc.returncode == 0 and f"usage: {name} " in proc.stdout, proc.stderr
    proc = run(target / "bin" / "vgg-eval", "--eval_dir", eval_run, "--output", tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert table_steps(proc.stdout) == [50, 100, 150]
    proc = run(target / "bin" / "vgg-eval", "--all-ckpts", env=env, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


API = """
import json, sys
import vgg_keras
assert "tensorflow" not in sys.modules, "import vgg_keras imported TensorFlow"
from vgg_keras import build_vgg, evaluate, train
run = train("demo", data_dir=sys.argv[1], log_dir=sys.argv[2], width_multiplier=0.0625,
            max_train_steps=3, mode="train", progress=False)
results = evaluate(run, eval_batch_size=64)
model = build_vgg("vgg16", num_classes=10, image_size=32, width_multiplier=0.0625)
print(json.dumps({"run": run, "steps": [r["step"] for r in results], "out": model.output.shape[-1]}))
"""


@stack_neutral  # the import order of the API: Python
def test_python_api_without_tensorflow_at_import(demo_dir, tmp_path):
    proc = run("python", "-c", API, demo_dir, tmp_path / "nb")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result == {"run": str(tmp_path / "nb"), "steps": [3], "out": 10}
