"""Start N training processes on this machine and watch them: TensorFlow workers, each with
its TF_CONFIG, or Ascend ranks, one per NPU, each with the environment HCCL reads.

    python -m vgg_keras.launch --workers 2 -- run_train.py --preset demo --log_dir runs/mw
    python -m vgg_keras.launch --npus 8 --rank_table 8p.json -- run_train.py --data_dir D ...

An Ascend rank gets ``RANK_ID``, ``RANK_SIZE``, ``RANK_TABLE_FILE`` and ``DEVICE_ID`` (and
``ASCEND_DEVICE_ID``) from the rank table, as the reference's run_8p.sh set them, and writes its
output to ``<--rank_logs>/rank_<i>/train.log``; rank 0's is also shown.  ``run_train.py`` gets
``--rank_size N`` when its command line has none.

Each worker gets free 127.0.0.1 ports for the whole cluster and its own task index; with
``--distribution auto`` (the default) run_train.py then trains with MultiWorkerMirroredStrategy.
Output is streamed line by line, prefixed ``[worker i]``.  When a worker dies, the others
lose their all-reduce partner; they get ``--grace`` seconds to notice and stop on their own,
then are terminated (SIGTERM, then SIGKILL), so a launch never hangs.  The exit code is 0 when
every worker succeeded, else the first failure's (128 + N for a worker killed by signal N).

SIGINT, SIGTERM and SIGHUP to the launcher (Ctrl-C, ``kill``, a closed terminal) are forwarded
to every worker, which saves its checkpoint and stops as a lone run_train.py does; they get
``--grace`` seconds, then the ones still running are terminated, and the launcher exits 130, 143
or 129.  The workers run in a
session of their own, so a Ctrl-C at the terminal reaches them once, through the launcher.

On several hosts, start run_train.py on each host instead: under SLURM with srun, on Kubernetes
through the training operator's TF_CONFIG, or with a TF_CONFIG of your own (docs/distributed.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from vgg_keras import documents
from vgg_keras.cli import UsageParser  # errors become one line and exit code 2
from vgg_keras.errors import UsageError, run_cli
from vgg_keras.signals import STOP

KILL_WAIT_SECONDS = 5.0  # after SIGTERM, before SIGKILL
MAX_PROCESSES = 64  # one machine: a bound on --workers and --npus (ports, pipes, threads)
MAX_GRACE_SECONDS = 86400.0  # a day; a timeout beyond the platform's limit would overflow
POLL_SECONDS = 0.2  # how soon the watch loop reports a signal the handler forwarded


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that were free on 127.0.0.1 a moment ago."""
    with contextlib.ExitStack() as stack:  # held until all are chosen: no port handed out twice
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def tf_configs(ports: Sequence[int]) -> list[str]:
    """One TF_CONFIG per worker: the same cluster, each its own task index."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    return [
        json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        for i in range(len(ports))
    ]


def _command(program: list[str]) -> list[str]:
    """A .py script runs with this interpreter; anything else as given (checked up front, so
    that no worker starts when another could not)."""
    if program[0].endswith(".py"):
        if not os.path.isfile(program[0]):
            raise UsageError(f"{program[0]}: no such script")
        return [sys.executable, *program]
    if shutil.which(program[0]) is None:
        raise UsageError(f"{program[0]}: command not found")
    return program


def _describe_exit(code: int) -> str:
    return f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with code {code}"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:  # a real-time signal has no name
        return f"signal {signum}"


def read_rank_table(path: str, npus: int) -> list[str]:
    """The device id of each rank 0..npus-1 in an HCCL rank table (``server_list[].device[]``
    with ``device_id`` and ``rank_id``, as the reference's 8p.json)."""
    table = documents.read_json(path, "HCCL rank table", required=True, name=f"--rank_table {path}")
    try:
        devices = [d for server in table["server_list"] for d in server["device"]]
        by_rank = {int(d["rank_id"]): str(d["device_id"]) for d in devices}
    except (ValueError, KeyError, TypeError) as err:
        raise UsageError(
            f"--rank_table {path}: not an HCCL rank table (expected JSON with server_list[]."
            "device[] holding device_id and rank_id)"
        ) from err
    if sorted(by_rank) != list(range(npus)):
        raise UsageError(
            f"--npus {npus}: {path} lists ranks {sorted(by_rank)}, expected 0..{npus - 1}"
        )
    return [by_rank[rank] for rank in range(npus)]


class Workers:
    """The processes, their output threads, a queue of their exits, the signals forwarded to
    them, and what ``watch`` has seen of them.

    ``start`` runs process ``i`` with ``envs[i]`` added to this environment; with ``logs``, its
    output goes to ``logs[i]`` and only process 0's is also printed.  Inside ``forwarding()``,
    SIGINT, SIGTERM and SIGHUP to this process are sent on to every running process.
    """

    def __init__(self, grace: float, label: str = "worker"):
        self.exits: queue.Queue[tuple[int, int]] = queue.Queue()
        self.procs: list[subprocess.Popen] = []
        self.label = label
        self.grace = grace
        self.signals: list[int] = []  # forwarded so far, in order
        # What watch() has seen: the exits, the first failure, the signals it has reported, and
        # when the processes still running are to be terminated.
        self.codes: dict[int, int] = {}
        self.failed: int | None = None
        self.reported = 0  # of self.signals
        self.deadline: float | None = None
        self._threads: list[threading.Thread] = []
        self._print_lock = threading.Lock()

    def start(
        self, command: list[str], envs: list[dict], notes: list[str], logs: list[str] | None = None
    ) -> None:
        try:
            for index, extra in enumerate(envs):
                if self.signals:  # interrupted while starting: start no more
                    return
                proc = subprocess.Popen(
                    command,
                    env={**os.environ, **extra, "PYTHONUNBUFFERED": "1"},
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    text=True,
                    errors="replace",
                    # Not in the terminal's process group: a Ctrl-C reaches the workers once,
                    # forwarded (a second SIGINT would make them exit without saving).
                    start_new_session=True,
                )
                self.procs.append(proc)
                if self.signals:  # arrived before the handler could see this process
                    proc.send_signal(self.signals[0])
                self.say(f"{self.label} {index}: pid {proc.pid}, {notes[index]}")
                log = logs[index] if logs else None
                thread = threading.Thread(target=self._stream, args=(index, proc, log), daemon=True)
                thread.start()
                self._threads.append(thread)
        except BaseException:  # a process that could not start: none of the others may stay
            self.stop(self.running())
            raise

    def say(self, line: str, prefix: str = "launch") -> None:
        with self._print_lock:
            print(f"[{prefix}] {line}", flush=True)

    def _stream(self, index: int, proc: subprocess.Popen, log: str | None) -> None:
        with open(log, "a", encoding="utf-8") if log else open(os.devnull, "w") as file:
            for line in proc.stdout:
                file.write(line)
                file.flush()
                if log is None or index == 0:
                    self.say(line.rstrip("\n"), f"{self.label} {index}")
        self.exits.put((index, proc.wait()))

    @contextlib.contextmanager
    def forwarding(self):
        """The stop signals are forwarded while inside; the handler only sends and records (it
        runs between two bytecodes of the main thread, which may hold the print lock)."""

        def forward(signum, _frame):
            self.signals.append(signum)
            for proc in self.procs:  # in order: the chief first, see watch()
                if proc.returncode is None:
                    proc.send_signal(signum)

        previous = {sig: signal.signal(sig, forward) for sig in STOP}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def running(self) -> list[int]:
        return [i for i, proc in enumerate(self.procs) if proc.poll() is None]

    def stop(self, indices: list[int]) -> None:
        """SIGTERM (a worker saves and stops if it can; after a forwarded signal, it is its
        second and it exits at once), then SIGKILL."""
        for i in indices:
            self.procs[i].send_signal(signal.SIGTERM)
        for i in indices:
            try:
                self.procs[i].wait(KILL_WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                self.say(f"{self.label} {i} ignored SIGTERM: killing it")
                self.procs[i].kill()
                self.procs[i].wait()

    def watch(self) -> int:
        """Wait for every process; after the first exit or a forwarded signal the others get
        ``grace`` seconds, after a failure they are told so.  Returns the launch's exit code."""
        count, label = len(self.procs), self.label
        while len(self.codes) < count:
            self._report_signals()
            timeout = POLL_SECONDS
            if self.deadline is not None:
                timeout = min(timeout, max(self.deadline - time.monotonic(), 0))
            try:
                index, code = self.exits.get(timeout=timeout)
            except queue.Empty:
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    self._terminate_the_rest()
                continue
            self._report_signals()  # before the exits it caused
            if index not in self.codes:
                self._record(index, code)
        # Let the output threads print what the ended processes wrote last.
        deadline = time.monotonic() + KILL_WAIT_SECONDS
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0))
        self._report_signals()  # one that came as the last process ended
        if self.signals:
            first = self.signals[0]
            self.say(f"stopped by {_signal_name(first)}: every {label} has ended")
            return 128 + first
        if self.failed is None:
            self.say(f"all {count} {label}s finished")
            return 0
        code = self.codes[self.failed]
        return 128 - code if code < 0 else code

    def _start_grace(self) -> None:
        """The others get ``grace`` seconds from now (or from earlier, if already counting)."""
        if self.deadline is None:
            self.deadline = time.monotonic() + self.grace

    def _report_signals(self) -> None:
        for signum in self.signals[self.reported :]:
            name = _signal_name(signum)
            if self.reported == 0:
                left = [i for i in range(len(self.procs)) if i not in self.codes]
                self.say(
                    f"{name}: forwarded to {self.label}(s) {', '.join(map(str, left))}; they "
                    f"save and stop, or are terminated in {self.grace:g} s"
                )
                self._start_grace()
            else:
                self.say(f"{name} again: forwarded, the {self.label}s exit without saving")
            self.reported += 1

    def _record(self, index: int, code: int) -> None:
        self.codes[index] = code
        self._start_grace()
        if code == 0 and not self.signals:
            return
        others = ""
        if not self.signals and self.failed is None:
            self.failed = index
            if any(i not in self.codes for i in self.running()):
                others = f"; the others get {self.grace:g} s to stop"
        self.say(f"{self.label} {index} {_describe_exit(code)}{others}")

    def _terminate_the_rest(self) -> None:
        left = [i for i in self.running() if i not in self.codes]
        after = "the signal" if self.signals else "another stopped"
        self.say(
            f"{self.label}(s) {', '.join(map(str, left))} still running {self.grace:g} s "
            f"after {after}: terminating them"
        )
        self.stop(left)
        for i in left:  # dead now; their output threads may still be reading
            self._record(i, self.procs[i].returncode)
        self.deadline = None


def run(command: list[str], count: int, grace: float) -> int:
    """Start ``count`` workers running ``command``; returns the launch's exit code."""
    command = _command(command)
    ports = free_ports(count)
    envs = [{"TF_CONFIG": tf_config} for tf_config in tf_configs(ports)]
    notes = [f"127.0.0.1:{port}" for port in ports]
    workers = Workers(grace)
    with workers.forwarding():
        workers.start(command, envs, notes)
        return workers.watch()


def run_npus(
    command: list[str], npus: int, rank_table: str | None, rank_logs: str, grace: float
) -> int:
    """One process per NPU, each with its rank's environment and log folder."""
    if npus > 1 and not rank_table:
        raise UsageError(
            f"--npus {npus}: give --rank_table FILE (the HCCL rank table, as the reference's "
            "8p.json), or set RANK_TABLE_FILE"
        )
    devices = read_rank_table(rank_table, npus) if rank_table else ["0"]
    command = _command(command)
    programs = {os.path.basename(arg) for arg in command[:2]}
    if programs & {"run_train.py", "vgg-train"} and "--rank_size" not in (
        arg.split("=")[0] for arg in command
    ):
        command = [*command, "--rank_size", str(npus)]
    envs, logs = [], []
    for rank, device in enumerate(devices):
        folder = os.path.join(rank_logs, f"rank_{rank}")
        os.makedirs(folder, exist_ok=True)
        logs.append(os.path.join(folder, "train.log"))
        # What each rank's process needs on top of this process's environment.
        env = {"RANK_ID": str(rank), "RANK_SIZE": str(npus)}
        env.update(DEVICE_ID=device, ASCEND_DEVICE_ID=device)
        if rank_table:
            env["RANK_TABLE_FILE"] = os.path.abspath(rank_table)
        envs.append(env)
    notes = [f"device {device}, log {log}" for device, log in zip(devices, logs)]
    workers = Workers(grace, "rank")
    with workers.forwarding():
        workers.start(command, envs, notes, logs)
        return workers.watch()


def parser() -> argparse.ArgumentParser:
    p = UsageParser(
        prog="python -m vgg_keras.launch",
        description="Run N local training workers (MultiWorkerMirroredStrategy via TF_CONFIG), "
        "or one process per Ascend NPU (--npus, HCCL via the rank table).",
    )
    p.add_argument("--workers", type=int, default=2, help="number of worker processes")
    p.add_argument(
        "--npus",
        type=int,
        help="Ascend: one process per NPU, with RANK_ID, RANK_SIZE, RANK_TABLE_FILE, DEVICE_ID",
    )
    p.add_argument(
        "--rank_table",
        default=os.environ.get("RANK_TABLE_FILE"),
        help="with --npus: the HCCL rank table JSON (default: $RANK_TABLE_FILE)",
    )
    p.add_argument(
        "--rank_logs",
        default="rank_logs",
        help="with --npus: each rank's output goes to DIR/rank_<i>/train.log (default: %(default)s)",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=30.0,
        help="seconds the others get to stop by themselves once a worker has stopped, and the "
        "workers get to save and stop after a SIGINT/SIGTERM/SIGHUP to the launcher",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- run_train.py [flags]")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise UsageError("give the program after --, e.g. -- run_train.py --preset demo")
    for flag, count in (("--workers", args.workers), ("--npus", args.npus)):
        if count is not None and not 1 <= count <= MAX_PROCESSES:
            raise UsageError(
                f"{flag}: must be >= 1 and <= {MAX_PROCESSES} (processes on this machine), "
                f"got {count}"
            )
    if not (math.isfinite(args.grace) and 0 < args.grace <= MAX_GRACE_SECONDS):
        raise UsageError(
            f"--grace: must be a number of seconds > 0 and <= {MAX_GRACE_SECONDS:g}, "
            f"got {args.grace:g}"
        )
    if args.npus is not None:
        return run_npus(command, args.npus, args.rank_table, args.rank_logs, args.grace)
    return run(command, args.workers, args.grace)


if __name__ == "__main__":
    sys.exit(run_cli(main))
