"""runlock.py: one trainer per log_dir, on a local disk (flock) and on a store (the record's
convention); the killed-trainer cases with real processes are in test_reliability.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid

import pytest

from vgg_keras import compat, storage
from vgg_keras.errors import UsageError
from vgg_keras.runlock import LOCK_FILE, RunLock


@pytest.fixture(params=["local", "ram"])
def log_dir(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "run")
    if compat.TF1:
        pytest.skip("ram:// is a TensorFlow 2 filesystem")
    return f"ram://{uuid.uuid4().hex}/run"


def _write_owner(log_dir: str, pid: int, host: str | None = None) -> None:
    storage.makedirs(log_dir)
    with storage.open(os.path.join(log_dir, LOCK_FILE), "w") as f:
        f.write(json.dumps({"pid": pid, "host": host or socket.gethostname()}))


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def test_a_second_trainer_is_refused_while_the_first_holds_the_lock(log_dir):
    with RunLock(log_dir) as lock:
        with storage.open(lock.path) as f:
            assert json.load(f)["pid"] == os.getpid()
        with pytest.raises(UsageError, match=r"is in use by another trainer \(pid \d+"):
            RunLock(log_dir).__enter__()
    assert not storage.exists(os.path.join(log_dir, LOCK_FILE))  # released: removed
    with RunLock(log_dir):
        pass


def test_a_dead_trainers_lock_is_taken_over(log_dir):
    dead = _dead_pid()
    _write_owner(log_dir, dead)
    with RunLock(log_dir) as lock:
        assert lock.stale_owner["pid"] == dead


def test_on_a_store_a_live_record_refuses_and_says_how_to_clear_a_stale_one():
    """A store has no flock: a record naming a live process here, or any process on another
    host (which cannot be asked), refuses the start; the message says to delete the lock."""
    if compat.TF1:
        pytest.skip("ram:// is a TensorFlow 2 filesystem")
    log_dir = f"ram://{uuid.uuid4().hex}/run"
    for pid, host in ((os.getpid(), None), (1, "another-host")):
        _write_owner(log_dir, pid, host)
        with pytest.raises(UsageError, match="if it is not running, delete the lock"):
            RunLock(log_dir).__enter__()
