"""Start N training workers on this machine, each with its TF_CONFIG, and watch them.

    python -m vgg_keras.launch --workers 2 -- run_train.py --preset demo --log_dir runs/mw

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

from vgg_keras.config import UsageParser  # errors become one line and exit code 2
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


class Workers:
    """The worker processes, their output threads and a queue of their exits."""

    def __init__(self, command: list[str], count: int):
        self.exits: queue.Queue[tuple[int, int]] = queue.Queue()
        self.procs: list[subprocess.Popen] = []
        self._print_lock = threading.Lock()
        ports = free_ports(count)
        for index, tf_config in enumerate(tf_configs(ports)):
            env = {**os.environ, "TF_CONFIG": tf_config, "PYTHONUNBUFFERED": "1"}
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
            self.say(f"worker {index}: pid {proc.pid}, 127.0.0.1:{ports[index]}")
            threading.Thread(target=self._stream, args=(index, proc), daemon=True).start()

    def say(self, line: str, prefix: str = "launch") -> None:
        with self._print_lock:
            print(f"[{prefix}] {line}", flush=True)

    def _stream(self, index: int, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.say(line.rstrip("\n"), f"worker {index}")
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
                self.say(f"worker {i} ignored SIGTERM: killing it")
                self.procs[i].kill()


def run(command: list[str], count: int, grace: float) -> int:
    """Start ``count`` workers running ``command``; returns the launch's exit code."""
    workers = Workers(_command(command), count)
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
                    f"worker(s) {', '.join(map(str, left))} still running {grace:g} s after "
                    "another stopped: terminating them"
                )
                workers.stop(left)
                continue
            codes[index] = code
            if code != 0 and failed is None:
                failed = index
                left = [i for i in workers.running() if i not in codes]
                others = f"; the others get {grace:g} s to stop" if left else ""
                workers.say(f"worker {index} {_describe_exit(code)}{others}")
            elif code != 0:
                workers.say(f"worker {index} {_describe_exit(code)}")
    except KeyboardInterrupt:  # the workers got the SIGINT too: they save and stop
        workers.say(f"interrupted: waiting up to {grace:g} s for the workers")
        try:
            for proc in workers.procs:
                proc.wait(grace)
        except subprocess.TimeoutExpired:
            workers.stop(workers.running())
        return 130
    if failed is None:
        workers.say(f"all {count} workers finished")
        return 0
    return _exit_status(codes[failed])


def parser() -> argparse.ArgumentParser:
    p = UsageParser(
        prog="python -m vgg_keras.launch",
        description="Run N local training workers (MultiWorkerMirroredStrategy via TF_CONFIG).",
    )
    p.add_argument("--workers", type=int, default=2, help="number of worker processes")
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
    return run(command, args.workers, args.grace)


if __name__ == "__main__":
    sys.exit(run_cli(main))
