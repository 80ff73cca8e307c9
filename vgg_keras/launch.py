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

On several hosts, start run_train.py on each with the same cluster and its own task instead
(README: distributed training).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence

from vgg_keras.cli import UsageParser  # errors become one line and exit code 2
from vgg_keras.errors import UsageError, run_cli

KILL_WAIT_SECONDS = 5.0  # after SIGTERM, before SIGKILL


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that were free on 127.0.0.1 a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:  # held until all are chosen, so the same port is not handed out twice
        for sock in sockets:
            sock.close()


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
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _exit_status(code: int) -> int:
    return 128 - code if code < 0 else code


def read_rank_table(path: str, npus: int) -> list[str]:
    """The device id of each rank 0..npus-1 in an HCCL rank table (``server_list[].device[]``
    with ``device_id`` and ``rank_id``, as the reference's 8p.json)."""
    try:
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
        devices = [d for server in table["server_list"] for d in server["device"]]
        by_rank = {int(d["rank_id"]): str(d["device_id"]) for d in devices}
    except OSError as err:
        raise UsageError(f"--rank_table {path}: cannot read it ({err.strerror})") from err
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


def rank_environments(npus: int, rank_table: str | None, devices: list[str]) -> list[dict]:
    """The variables each rank's process needs on top of this process's environment."""
    envs = []
    for rank, device in enumerate(devices):
        env = {"RANK_ID": str(rank), "RANK_SIZE": str(npus)}
        env.update(DEVICE_ID=device, ASCEND_DEVICE_ID=device)
        if rank_table:
            env["RANK_TABLE_FILE"] = os.path.abspath(rank_table)
        envs.append(env)
    return envs


class Workers:
    """The processes, their output threads and a queue of their exits.

    Process ``i`` runs ``command`` with ``envs[i]`` added to this environment; with ``logs``,
    its output goes to ``logs[i]`` and only process 0's is also printed.
    """

    def __init__(
        self,
        command: list[str],
        envs: list[dict],
        label: str = "worker",
        logs: list[str] | None = None,
        notes: list[str] | None = None,
    ):
        self.exits: queue.Queue[tuple[int, int]] = queue.Queue()
        self.procs: list[subprocess.Popen] = []
        self.label = label
        self._print_lock = threading.Lock()
        for index, extra in enumerate(envs):
            env = {**os.environ, **extra, "PYTHONUNBUFFERED": "1"}
            proc = subprocess.Popen(
                command,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
            )
            self.procs.append(proc)
            note = f", {notes[index]}" if notes else ""
            self.say(f"{label} {index}: pid {proc.pid}{note}")
            log = logs[index] if logs else None
            threading.Thread(target=self._stream, args=(index, proc, log), daemon=True).start()

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

    def running(self) -> list[int]:
        return [i for i, proc in enumerate(self.procs) if proc.poll() is None]

    def stop(self, indices: list[int]) -> None:
        """SIGTERM (a worker saves and stops if it can), then SIGKILL."""
        for i in indices:
            self.procs[i].send_signal(signal.SIGTERM)
        for i in indices:
            try:
                self.procs[i].wait(KILL_WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                self.say(f"{self.label} {i} ignored SIGTERM: killing it")
                self.procs[i].kill()


def run(command: list[str], count: int, grace: float) -> int:
    """Start ``count`` workers running ``command``; returns the launch's exit code."""
    ports = free_ports(count)
    envs = [{"TF_CONFIG": tf_config} for tf_config in tf_configs(ports)]
    notes = [f"127.0.0.1:{port}" for port in ports]
    return watch(Workers(_command(command), envs, notes=notes), grace)


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
    training = bool(programs & {"run_train.py", "vgg-train"})
    if training and not any(arg.split("=")[0] == "--rank_size" for arg in command):
        command = [*command, "--rank_size", str(npus)]
    logs = []
    for rank in range(npus):
        folder = os.path.join(rank_logs, f"rank_{rank}")
        os.makedirs(folder, exist_ok=True)
        logs.append(os.path.join(folder, "train.log"))
    notes = [f"device {device}, log {log}" for device, log in zip(devices, logs)]
    envs = rank_environments(npus, rank_table, devices)
    return watch(Workers(command, envs, "rank", logs, notes), grace)


def watch(workers: Workers, grace: float) -> int:
    """Wait for every process; after the first exit the others get ``grace`` seconds, after a
    failure they are told so.  Returns the launch's exit code."""
    count = len(workers.procs)
    label = workers.label
    codes: dict[int, int] = {}
    failed: int | None = None
    try:
        while len(codes) < count:
            timeout = grace if codes else None  # after the first exit, the rest get ``grace``
            try:
                index, code = workers.exits.get(timeout=timeout)
            except queue.Empty:
                left = workers.running()
                workers.say(
                    f"{label}(s) {', '.join(map(str, left))} still running {grace:g} s after "
                    "another stopped: terminating them"
                )
                workers.stop(left)
                continue
            codes[index] = code
            if code != 0 and failed is None:
                failed = index
                left = [i for i in workers.running() if i not in codes]
                others = f"; the others get {grace:g} s to stop" if left else ""
                workers.say(f"{label} {index} {_describe_exit(code)}{others}")
            elif code != 0:
                workers.say(f"{label} {index} {_describe_exit(code)}")
    except KeyboardInterrupt:  # the workers got the SIGINT too: they save and stop
        workers.say(f"interrupted: waiting up to {grace:g} s for the {label}s")
        try:
            for proc in workers.procs:
                proc.wait(grace)
        except subprocess.TimeoutExpired:
            workers.stop(workers.running())
        return 130
    if failed is None:
        workers.say(f"all {count} {label}s finished")
        return 0
    return _exit_status(codes[failed])


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
        help="seconds the others get to stop by themselves once a worker has stopped",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- run_train.py [flags]")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise UsageError("give the program after --, e.g. -- run_train.py --preset demo")
    if args.workers < 1:
        raise UsageError(f"--workers: must be >= 1, got {args.workers}")
    if args.grace <= 0:
        raise UsageError(f"--grace: must be > 0 seconds, got {args.grace}")
    if args.npus is not None:
        if args.npus < 1:
            raise UsageError(f"--npus: must be >= 1, got {args.npus}")
        return run_npus(command, args.npus, args.rank_table, args.rank_logs, args.grace)
    return run(command, args.workers, args.grace)


if __name__ == "__main__":
    sys.exit(run_cli(main))
