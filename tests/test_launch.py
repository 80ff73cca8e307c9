"""The local launcher and multi-worker training, with real worker processes on 127.0.0.1.

Each worker is a ``run_train.py`` subprocess with its own TF_CONFIG, training with
MultiWorkerMirroredStrategy through gRPC on this machine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import demo_config

from vgg_keras import compat, evaluation, results, rundir
from vgg_keras.data import pipeline
from vgg_keras.reporting import read_metrics
from vgg_keras.tools import launch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = [sys.executable, "-m", "vgg_keras.launch"]
TINY = ["--preset", "demo", "--width_multiplier", "0.0625", "--batch_size", "16"]
TINY += ["--progress", "false", "--iterations_per_loop", "5"]


def test_every_worker_gets_the_whole_cluster_and_its_own_index():
    configs = [json.loads(text) for text in launch.tf_configs([5001, 5002, 5003])]
    cluster = {"worker": ["127.0.0.1:5001", "127.0.0.1:5002", "127.0.0.1:5003"]}
    assert [c["cluster"] for c in configs] == [cluster] * 3
    assert [c["task"] for c in configs] == [{"type": "worker", "index": i} for i in range(3)]


def test_free_ports_are_distinct_and_can_be_served():
    ports = launch.free_ports(4)
    assert len(set(ports)) == 4
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "2"], "error: give the program after --"),
        (["--workers", "0", "--", "run_train.py"], "error: --workers: must be >= 1 and <= 64"),
        (["--grace", "0", "--", "run_train.py"], "error: --grace: must be a number of seconds > 0"),
        (["--grace", "inf", "--", "run_train.py"], "error: --grace: must be a number of seconds"),
        (["--grace", "nan", "--", "run_train.py"], "error: --grace: must be a number of seconds"),
        (["--grace", "1e9", "--", "run_train.py"], "error: --grace: must be a number of seconds"),
        (["--workers", "2.5", "--", "run_train.py"], "error: argument --workers: invalid int"),
        (["--workers", "10000000", "--", "run_train.py"], "error: --workers: must be >= 1 and <="),
        (["--npus", "1e3", "--", "run_train.py"], "error: argument --npus: invalid int"),
        (["--npus", "10" * 10, "--", "run_train.py"], "error: --npus: must be >= 1 and <= 64"),
        (["--", "no_such_script.py"], "error: no_such_script.py: no such script"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args, message):
    proc = subprocess.run([*LAUNCH, *args], capture_output=True, text=True, cwd=REPO_ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith(message)
    assert "Traceback" not in proc.stdout and "[launch]" not in proc.stdout  # nothing started


# Worker 0 fails at once; worker 1 hangs and ignores SIGTERM, as a worker blocked in an
# all-reduce whose partner is gone would.
FAIL_AND_HANG = """
import json, os, signal, sys, time
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
if index == 0:
    sys.exit(3)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("hanging", flush=True)
time.sleep(600)
"""


def test_a_hung_worker_is_stopped_within_the_grace_period_after_another_fails():
    started = time.monotonic()
    proc = subprocess.run(
        [*LAUNCH, "--workers", "2", "--grace", "1", "--", sys.executable, "-c", FAIL_AND_HANG],
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 3, proc.stdout  # the failed worker's exit code
    assert "[launch] worker 0 exited with code 3; the others get 1 s to stop" in proc.stdout
    assert "worker(s) 1 still running 1 s after another stopped: terminating them" in proc.stdout
    assert "[launch] worker 1 ignored SIGTERM: killing it" in proc.stdout
    assert elapsed < 1 + launch.KILL_WAIT_SECONDS + 10


# A rank that stops on SIGINT/SIGTERM as run_train.py does (signals.StopSignals: the first one
# "saves", writing a file, and exits 128 + N; a second one exits at once, unsaved); with IGNORE
# set, rank 1 ignores SIGTERM, as a worker blocked in a collective would.
SAVING_RANK = """
import os, signal, sys, time
from vgg_keras.signals import StopSignals
rank = os.environ["RANK_ID"]
with StopSignals() as signals:
    if rank == "1" and os.environ.get("IGNORE"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ready", flush=True)
    while signals.received is None:
        time.sleep(0.05)
name = signal.Signals(signals.received).name
print("got", name, flush=True)
with open(os.path.join(sys.argv[1], "saved_" + rank), "a") as f:
    f.write(name + "\\n")
sys.exit(signals.exit_code)
"""


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a process that still runs (a zombie has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def launch_ranks(tmp_path):
    """``launch_ranks(env)`` starts two ranks (see _launch_ranks); whatever a failed test leaves
    running is killed afterwards."""
    started = []

    def start(env: dict | None = None):
        proc, output = _launch_ranks(tmp_path, env)
        started.append((proc, _pids(output, "rank")))
        return proc, output

    yield start
    for proc, pids in started:
        for pid in [proc.pid, *pids]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait()


def _launch_ranks(tmp_path, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """Two ranks of SAVING_RANK, started as a terminal starts a job: in a process group of its
    own (so that a Ctrl-C can be sent to the group); returns it and its output so far."""
    device = [{"device_id": str(i), "rank_id": str(i)} for i in (0, 1)]
    (tmp_path / "2p.json").write_text(json.dumps({"server_list": [{"device": device}]}))
    (tmp_path / "rank.py").write_text(SAVING_RANK)
    proc = subprocess.Popen(
        [*LAUNCH, "--npus", "2", "--rank_table", "2p.json", "--grace", "1"]
        + ["--", "rank.py", str(tmp_path)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": REPO_ROOT, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    rank_1_log = tmp_path / "rank_logs" / "rank_1" / "train.log"
    lines = []
    for line in proc.stdout:  # rank 0's output is shown, rank 1's is in its log
        lines.append(line)
        # Rank 0's output may come before the launcher's line with rank 1's pid.
        if "[rank 0] ready" in "".join(lines) and len(_pids("".join(lines), "rank")) == 2:
            break
    while "ready" not in (rank_1_log.read_text() if rank_1_log.exists() else ""):
        assert time.monotonic() < deadline, "rank 1 did not start"
        time.sleep(0.05)
    return proc, "".join(lines)


def _pids(output: str, label: str) -> list[int]:
    return [int(pid) for pid in re.findall(rf"\[launch\] {label} \d+: pid (\d+)", output)]


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm", "sighup"])
def test_a_signal_to_the_launcher_reaches_every_rank_once_and_the_launcher_waits(
    tmp_path, launch_ranks, how
):
    """Ctrl-C at a terminal signals the whole foreground process group: the ranks, in a session
    of their own, get it once, through the launcher (a second one would mean exit unsaved).
    SIGHUP (the terminal closed, the ssh connection dropped) stops them as SIGTERM does."""
    proc, started = launch_ranks()
    pids = _pids(started, "rank")
    # Outside the launcher's group: the group's signal reaches the ranks only through it (the
    # kernel may merge two SIGINTs that arrive before a busy rank runs, so look at the groups).
    assert len(pids) == 2 and {os.getpgid(pid) for pid in pids}.isdisjoint({proc.pid})
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGHUP)
    rest = proc.communicate(timeout=60)[0]
    name, code = {"ctrl-c": ("SIGINT", 130), "sigterm": ("SIGTERM", 143)}.get(how, ("SIGHUP", 129))
    assert proc.returncode == code, rest
    assert f"[launch] {name}: forwarded to rank(s) 0, 1; they save and stop" in rest
    for rank in (0, 1):
        assert (tmp_path / f"saved_{rank}").read_text() == f"{name}\n"  # once each
        assert f"[launch] rank {rank} exited with code {code}" in rest
    assert rest.rstrip().endswith(f"[launch] stopped by {name}: every rank has ended")
    assert not [pid for pid in pids if _alive(pid)]


def test_a_rank_that_ignores_the_signal_is_killed_after_the_grace_period(tmp_path, launch_ranks):
    proc, output = launch_ranks({"IGNORE": "1"})
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=60)[0]
    elapsed = time.monotonic() - started
    assert proc.returncode == 143, rest
    assert "[launch] rank 0 exited with code 143" in rest
    assert "[launch] rank(s) 1 still running 1 s after the signal: terminating them" in rest
    assert "[launch] rank 1 ignored SIGTERM: killing it" in rest
    assert "[launch] rank 1 was killed by SIGKILL" in rest
    assert elapsed < 1 + launch.KILL_WAIT_SECONDS + 10
    assert (tmp_path / "saved_0").exists() and not (tmp_path / "saved_1").exists()
    pids = _pids(output, "rank")
    assert len(pids) == 2 and not [pid for pid in pids if _alive(pid)]


class Launch:
    """A launch whose output is read line by line in the background."""

    def __init__(self, workers: int, flags: list[str]):
        command = [*LAUNCH, "--workers", str(workers), "--grace", "10", "--", "run_train.py"]
        self.proc = subprocess.Popen(
            [*command, *flags],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 240) -> re.Match:
        """The first line (from now on) matching ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                self.proc.kill()
                pytest.fail(f"no line matching {pattern!r}:\n" + "\n".join(self.lines[-40:]))
            if line is None:
                pytest.fail(f"launch ended before {pattern!r}:\n" + "\n".join(self.lines[-40:]))
            self.lines.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def finish(self, timeout: float = 240) -> int:
        code = self.proc.wait(timeout)
        for line in iter(lambda: self._queue.get(timeout=10), None):
            self.lines.append(line)
        return code

    def of(self, worker: int) -> list[str]:
        prefix = f"[worker {worker}] "
        return [line[len(prefix) :] for line in self.lines if line.startswith(prefix)]

    def pid(self, worker: int) -> int:
        return int(re.search(rf"\[launch\] worker {worker}: pid (\d+)", "\n".join(self.lines))[1])


@pytest.mark.skipif(
    not compat.MULTI_WORKER, reason="multi-worker training needs TF 2 (refused on TF 1.15)"
)
@pytest.mark.parametrize("to", ["launcher", "worker 1"])
def test_sigterm_stops_every_worker_after_the_same_call_and_the_chief_saves(demo_dir, tmp_path, to):
    """To the launcher (forwarded to both, reaching them at different calls), or to worker 1
    alone (a scheduler preempting one task): the workers vote at every call and stop together."""
    log_dir = tmp_path / "run"
    flags = [*TINY, "--data_dir", demo_dir, "--log_dir", str(log_dir), "--mode", "train"]
    flags += ["--max_train_steps", "3000", "--display_every", "10"]
    flags += ["--save_checkpoints_steps", "1000"]
    run = Launch(2, flags)
    run.wait_for(r"^\[worker 0\] \S+ \S+  step:\s+10 ")
    if to == "launcher":
        run.proc.send_signal(signal.SIGTERM)
    else:
        os.kill(run.pid(1), signal.SIGTERM)
    assert run.finish(timeout=120) == 143, "\n".join(run.lines[-30:])
    # The steps are said once, by the chief; each worker says its own start and end.
    assert not [x for x in run.of(1) if "  step: " in x] and run.of(1)[0].startswith("distrib")
    forwarded = "[launch] SIGTERM: forwarded to worker(s) 0, 1; they save and stop, or are "
    assert (forwarded in "\n".join(run.lines)) is (to == "launcher")
    chief_saw = "SIGTERM" if to == "launcher" else "another worker's signal"
    stopped = [
        re.match(rf"{chief_saw}: stopped at step (\d+), saved (\S+) \(exit 143\)$", x)
        for x in run.of(0)
    ]
    stopped = [m for m in stopped if m]
    assert len(stopped) == 1, "\n".join(run.of(0)[-10:])
    step = int(stopped[0][1])
    assert 10 <= step < 1000  # the step reached, not a scheduled save
    assert rundir.latest_checkpoint(str(log_dir)) == stopped[0][2] == f"{log_dir}/model.ckpt-{step}"
    # The other worker stopped after the same call, whichever of them saw the signal first.
    other = [x for x in run.of(1) if "stopped at step" in x]
    assert other and other[0].endswith(f"stopped at step {step}, the chief saved it (exit 143)"), (
        "\n".join(run.of(1)[-10:])
    )
    for worker in (0, 1):  # the first to end says the other gets --grace seconds
        said = f"[launch] worker {worker} exited with code 143"
        assert [x for x in run.lines if x.startswith(said)], "\n".join(run.lines[-10:])
    if to == "launcher":
        assert "[launch] stopped by SIGTERM: every worker has ended" in run.lines
    assert not [pid for pid in (run.pid(0), run.pid(1)) if _alive(pid)]


def _free_port_pair() -> int:
    """A port p such that p and p + 1 were both free on 127.0.0.1 a moment ago."""
    for _ in range(100):
        port = launch.free_ports(1)[0]
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except (OSError, OverflowError):
                continue
        return port
    pytest.fail("no two consecutive free ports")


def _srun_task(rank: int, port: int, flags: list[str]) -> subprocess.Popen:
    """run_train.py as task ``rank`` of a two-task srun step on one node: SLURM's variables as
    srun sets them, the node's ports reserved from ``port`` (srun --resv-ports), no TF_CONFIG."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM") and k != "TF_CONFIG"}
    for name in ("SLURM_NODELIST", "SLURM_JOB_NODELIST", "SLURM_STEP_NODELIST"):
        env[name] = "localhost"
    for name in ("SLURM_TASKS_PER_NODE", "SLURM_STEP_TASKS_PER_NODE"):
        env[name] = "2"
    env.update(SLURM_NTASKS="2", SLURM_STEP_NUM_TASKS="2", SLURM_NNODES="1", SLURM_JOB_ID="7")
    env.update(SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NODEID="0")
    env.update(SLURMD_NODENAME="localhost", SLURM_STEP_RESV_PORTS=f"{port}-{port + 1}")
    return subprocess.Popen(
        [sys.executable, "run_train.py", *flags],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.skipif(
    not compat.MULTI_WORKER, reason="multi-worker training needs TF 2 (refused on TF 1.15)"
)
def test_srun_tasks_train_the_run_that_launched_workers_train(demo_dir, tmp_path):
    """Two tasks of an srun step on one node, the cluster read from SLURM's environment (task 0
    with --distribution multi_worker, task 1 with auto), end with the weights of two workers
    started by the launcher with TF_CONFIG; only the chief writes."""
    flags = ["--arch", "vgg16", "--width_multiplier", "0.0625", "--image_size", "32"]
    flags += ["--class_num", "10", "--batch_size", "8", "--max_train_steps", "4"]
    flags += ["--mode", "train", "--data_dir", demo_dir, "--progress", "false"]
    slurm_dir, launch_dir = tmp_path / "srun", tmp_path / "launch"
    port = _free_port_pair()
    tasks = [
        _srun_task(
            0, port, [*flags, "--distribution", "multi_worker", "--log_dir", str(slurm_dir)]
        ),
        _srun_task(1, port, [*flags, "--log_dir", str(slurm_dir)]),
    ]
    launched = Launch(2, [*flags, "--log_dir", str(launch_dir)])
    outputs = [task.communicate(timeout=600)[0] for task in tasks]
    assert launched.finish() == 0, "\n".join(launched.lines[-40:])
    for task, output in zip(tasks, outputs):
        assert task.returncode == 0, output[-3000:]
    assert "2 replicas = 2 worker(s) x 1; this is worker 0 (chief)" in outputs[0]
    assert "; this is worker 1" in outputs[1] and "(chief)" not in outputs[1]

    fingerprints = [re.findall(r"^weights fingerprint (\w+)$", out, re.M) for out in outputs]
    fingerprints.append(
        [
            x[len("weights fingerprint ") :]
            for x in launched.of(0)
            if x.startswith("weights fingerprint ")
        ]
    )
    assert len(fingerprints[0]) == 1 and fingerprints[0] == fingerprints[1] == fingerprints[2]

    # The chief alone writes: the checkpoint, the log, the metrics, the (pid-named) events.
    assert rundir.list_checkpoints(str(slurm_dir)) == [f"{slurm_dir}/model.ckpt-4"]
    log = (slurm_dir / "train.log").read_text()
    assert "worker 0 of 2 reads" in log and "worker 1 of 2" not in log
    assert [m["step"] for m in read_metrics(str(slurm_dir)) if "loss" in m] == [4]
    events = [f for f in os.listdir(slurm_dir) if f.startswith("events.out.tfevents.")]
    assert [name.split(".")[-3] for name in events] == [str(tasks[0].pid)]


@dataclasses.dataclass
class KilledAndResumed:
    log_dir: str
    killed: Launch  # worker 1 SIGKILLed once model.ckpt-10 existed
    stopped_after: float  # seconds from the kill to the launch's exit
    newest: str  # the newest checkpoint after the kill
    resumed: Launch  # the same flags again, 10 more steps, then an evaluation


@pytest.fixture(scope="module")
def killed_and_resumed(demo_dir, tmp_path_factory) -> KilledAndResumed:
    """Two workers training; worker 1 is killed mid-run; then both are started again.

    The two launches (about a minute on two cores) are shared by the tests below.
    """
    if not compat.MULTI_WORKER:
        pytest.skip("multi-worker training needs TF 2 (refused on TF 1.15 with one line)")
    log_dir = str(tmp_path_factory.mktemp("multi_worker") / "run")
    flags = [*TINY, "--data_dir", demo_dir, "--log_dir", log_dir]
    flags += ["--display_every", "10", "--save_checkpoints_steps", "10"]
    killed = Launch(2, [*flags, "--mode", "train", "--max_train_steps", "100000"])
    killed.wait_for(r"^\[worker 0\] \S+ \S+  step:\s+20 ")  # model.ckpt-10 is written by now
    os.kill(killed.pid(1), signal.SIGKILL)
    started = time.monotonic()
    killed.finish(timeout=60)
    stopped_after = time.monotonic() - started
    newest = rundir.latest_checkpoint(log_dir)
    step = rundir.checkpoint_step(newest)
    resumed = Launch(
        2, [*flags, "--mode", "train_and_evaluate", "--max_train_steps", str(step + 10)]
    )
    resumed.finish()
    return KilledAndResumed(log_dir, killed, stopped_after, newest, resumed)


@pytest.mark.slow
def test_a_dead_worker_makes_the_others_stop_within_a_bounded_time(killed_and_resumed):
    run = killed_and_resumed.killed
    assert run.proc.returncode == 128 + signal.SIGKILL, "\n".join(run.lines[-30:])
    assert "[launch] worker 1 was killed by SIGKILL; the others get 10 s to stop" in run.lines
    # The survivor noticed by itself (its own exit code 1, not a signal from the launcher).
    assert any(x.startswith("error: lost contact with another worker") for x in run.of(0))
    assert "[launch] worker 0 exited with code 1" in run.lines
    assert killed_and_resumed.stopped_after < 30


@pytest.mark.slow
def test_a_restart_resumes_every_worker_from_the_newest_checkpoint(killed_and_resumed):
    run, newest = killed_and_resumed.resumed, killed_and_resumed.newest
    step = rundir.checkpoint_step(newest)
    assert step >= 10
    assert run.proc.returncode == 0, "\n".join(run.lines[-60:])
    assert "[launch] all 2 workers finished" in run.lines
    end = f"{killed_and_resumed.log_dir}/model.ckpt-{step + 10}"
    for i in (0, 1):
        assert f"resumed from {newest} at step {step}" in run.of(i)
        assert f"done: {step + 10} steps, checkpoint {end}" in run.of(i)
        assert "distribution: multi_worker, 2 replicas = 2 worker(s) x 1" in run.of(i)[0]


@pytest.mark.slow
def test_the_chief_alone_prints_the_evaluation_table(killed_and_resumed):
    """Every worker evaluates (the batches are collectives); one table says it once."""
    run = killed_and_resumed.resumed
    assert run.of(0).count(results.HEADER) == 1, "\n".join(run.lines[-40:])
    assert results.HEADER not in run.of(1)


@pytest.mark.slow
def test_the_workers_end_with_bit_identical_weights(killed_and_resumed):
    run = killed_and_resumed.resumed
    prints = [[x for x in run.of(i) if x.startswith("weights fingerprint ")] for i in (0, 1)]
    assert len(prints[0]) == 1 and prints[0] == prints[1]


@pytest.mark.slow
def test_the_workers_read_disjoint_shares_that_make_up_the_training_split(
    killed_and_resumed, demo_dir
):
    shares = {}
    for i in (0, 1):
        line = next(x for x in killed_and_resumed.resumed.of(i) if x.startswith(f"worker {i} of 2"))
        names, records = re.search(r"train files: (.*) \((\d+) records per epoch\)", line).groups()
        shares[i] = (set(names.split(", ")), int(records))
    split = pipeline.load_split(demo_config(data_dir=demo_dir).input, "train")
    assert shares[0][0] and shares[1][0] and not shares[0][0] & shares[1][0]
    assert shares[0][0] | shares[1][0] == {os.path.basename(f) for f in split.files}
    assert shares[0][1] + shares[1][1] == split.num_examples


@pytest.mark.slow
def test_only_the_chief_writes_logs_summaries_and_checkpoints(killed_and_resumed):
    log_dir = killed_and_resumed.log_dir
    runs = (killed_and_resumed.killed, killed_and_resumed.resumed)
    # An events file is named after the process that writes it: one per launch, the chief's.
    events = sorted(f for f in os.listdir(log_dir) if f.startswith("events.out.tfevents."))
    assert [name.split(".")[-3] for name in events] == [str(run.pid(0)) for run in runs]
    step = rundir.checkpoint_step(killed_and_resumed.newest)
    logged = [m["step"] for m in read_metrics(log_dir) if "loss" in m]
    assert logged == sorted(set(logged)) and logged[-1] == step + 10, "each step logged once"
    log = open(os.path.join(log_dir, "train.log")).read()
    assert log.count("worker 0 of 2 reads") == 2 and "worker 1 of 2 reads" not in log
    saved = [rundir.checkpoint_step(p) for p in rundir.list_checkpoints(log_dir)]
    assert saved[-1] == step + 10 and all(s % 10 == 0 for s in saved)


@pytest.mark.slow
def test_evaluation_under_the_strategy_counts_every_image_once(killed_and_resumed, demo_dir):
    """The chief reports the totals of one pass split between the workers, equal to a
    single-process evaluation of the same checkpoint (the other prints no table)."""
    run, log_dir = killed_and_resumed.resumed, killed_and_resumed.log_dir
    rows = [
        [x.split() for x in run.of(i) if re.match(r"\s+\d+\s+\d+\.\d+\s+\d+\.\d+\s", x)]
        for i in (0, 1)
    ]
    assert len(rows[0]) == 1 and rows[1] == []
    step, _, top1, top5, loss = rows[0][0][:5]
    config = demo_config(data_dir=demo_dir, width_multiplier=0.0625, batch_size=16)
    evaluator = evaluation.Evaluator(config, None, precision="fp32")
    try:
        alone = evaluator.evaluate(f"{log_dir}/model.ckpt-{step}")
    finally:
        evaluator.close()
    assert alone["images"] == pipeline.load_split(config.input, "validation").num_examples
    # Accuracies printed in percent to 2 decimals, the loss to 4; one image of 360 moves top-1
    # by 0.28 points.
    for printed, key, scale in ((top1, "top1", 100), (top5, "top5", 100), (loss, "loss", 1)):
        assert float(printed) == pytest.approx(
            scale * alone[key], abs=1e-2 if scale > 1 else 1e-4
        ), key


def _read_weights(prefix: str) -> dict:
    from vgg_keras.compat import tf

    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def _assert_same_weights(got: dict, expected: dict, what: str) -> None:
    """Equal but for rounding: a gradient summed over two workers' halves of a batch rounds
    otherwise than one over the whole batch, the more so on fewer threads (a momentum slot of
    the first layer differed by 2.3e-6 after 12 steps on one core, slots of about 1e-2); a
    loss not divided by the number of replicas would double every update."""
    assert got.keys() == expected.keys(), what
    for name, value in expected.items():
        np.testing.assert_allclose(
            got[name], value, rtol=1e-5, atol=1e-5, err_msg=f"{what}: {name}"
        )


@pytest.mark.slow
@pytest.mark.skipif(not compat.MULTI_WORKER, reason="multi-worker training needs TF 2")
def test_multi_worker_takes_the_steps_of_one_device_on_the_global_batch_and_resumes_on_it(
    shard_writer, tmp_path
):
    """Two workers x 8 images against one device x 16, then the two-worker checkpoint resumed
    on one device; a TF_CONFIG ``chief`` task is worker 0 and gives the same run.

    The workers read disjoint files, so they see other images than the single device does; on
    a dataset of 64 copies of one flat image (random crops and flips of it are all equal) every
    global batch is the same, and the steps must agree when the update is the mean gradient
    over the global batch (each worker's loss divided by the number of replicas).
    """
    data = tmp_path / "flat"
    image = np.empty((32, 32, 3), np.uint8)
    image[:] = (200, 60, 120)
    shard_writer(str(data), [image] * 64, [4] * 64, num_shards=2, num_classes=10)
    flags = ["--preset", "demo", "--data_dir", str(data), "--width_multiplier", "0.0625"]
    flags += ["--iterations_per_loop", "3", "--display_every", "3", "--mode", "train"]
    flags += ["--progress", "false", "--save_checkpoints_steps", "6", "--seed", "3"]
    workers_dir, one_dir, chief_dir = tmp_path / "workers", tmp_path / "one", tmp_path / "chief"
    two = Launch(
        2, [*flags, "--batch_size", "8", "--max_train_steps", "6", "--log_dir", str(workers_dir)]
    )
    single = subprocess.Popen(
        [sys.executable, "run_train.py", *flags, "--batch_size", "16", "--max_train_steps", "12"]
        + ["--log_dir", str(one_dir)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert two.finish() == 0, "\n".join(two.lines[-40:])
    assert single.wait(timeout=600) == 0, single.stdout.read()[-3000:]
    assert "distribution: multi_worker, 2 replicas = 2 worker(s) x 1" in two.of(0)[0]
    reference = _read_weights(f"{one_dir}/model.ckpt-6")
    _assert_same_weights(_read_weights(f"{workers_dir}/model.ckpt-6"), reference, "2 workers")
    assert np.abs(reference["fc1/kernel/Momentum"]).max() > 0  # it trained

    # A chief and a worker; and the two workers' checkpoint resumed on one device.
    ports = launch.free_ports(2)
    cluster = {"chief": [f"127.0.0.1:{ports[0]}"], "worker": [f"127.0.0.1:{ports[1]}"]}
    tasks = [{"type": "chief", "index": 0}, {"type": "worker", "index": 0}]
    chief_cluster = [
        subprocess.Popen(
            [sys.executable, "run_train.py", *flags, "--batch_size", "8"]
            + ["--max_train_steps", "6", "--log_dir", str(chief_dir)],
            cwd=REPO_ROOT,
            env={**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": task})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for task in tasks
    ]
    resumed = subprocess.run(
        [sys.executable, "run_train.py", *flags, "--batch_size", "16", "--max_train_steps", "12"]
        + ["--log_dir", str(workers_dir), "--distribution", "none"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    outputs = [proc.communicate(timeout=600)[0] for proc in chief_cluster]
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert f"resumed from {workers_dir}/model.ckpt-6 at step 6" in resumed.stdout
    _assert_same_weights(
        _read_weights(f"{workers_dir}/model.ckpt-12"),
        _read_weights(f"{one_dir}/model.ckpt-12"),
        "2 workers, then one device",
    )

    for proc, output in zip(chief_cluster, outputs):
        assert proc.returncode == 0, output[-3000:]
    assert "; this is worker 0 (chief)" in outputs[0]
    assert "; this is worker 1" in outputs[1] and "(chief)" not in outputs[1]
    fingerprints = [re.findall(r"^weights fingerprint (\w+)$", out, re.M) for out in outputs]
    assert len(fingerprints[0]) == 1 and fingerprints[0] == fingerprints[1]
    # The chief writes the checkpoints and the log; the run is the two workers' run.
    assert rundir.list_checkpoints(str(chief_dir)) == [f"{chief_dir}/model.ckpt-6"]
    log = (chief_dir / "train.log").read_text()
    assert "worker 0 of 2 reads" in log and "worker 1 of 2" not in log
    _assert_same_weights(_read_weights(f"{chief_dir}/model.ckpt-6"), reference, "chief + worker")
