"""One trainer per log_dir: ``<log_dir>/train.lock``, an exclusive ``flock`` with the owner's pid.

The kernel drops a ``flock`` when its process ends, however it ends (``kill -9`` included), so
a lock file left behind by a dead trainer is stale by construction and the next trainer simply
takes it over.  The pid and host written into the file are for the message a second trainer
prints, and for filesystems without ``flock``, where a live pid on this host is the test.  On
an object store (a ``gs://`` or ``s3://`` log_dir) there is no lock at all, only this
convention: the record is read, then written, and a second trainer that starts between the two
is not stopped (docs/storage.md).

Why not the ``filelock`` package: its ``FileLock`` takes the same ``flock`` but cannot say who
holds the lock (the "in use by pid N on HOST" message, the "took over from pid N" note need the
owner's record, written under the lock), and its ``SoftFileLock`` fallback for filesystems
without ``flock`` cannot tell a lock left by a killed trainer from a live one, which this one
does by asking whether the recorded pid still runs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time

from vgg_keras import documents, storage
from vgg_keras.errors import RunError, UsageError

LOCK_FILE = "train.lock"


class RunLock:
    """Holds ``<log_dir>/train.lock`` from ``__enter__`` to ``__exit__``.

    Creates ``log_dir``; raises UsageError when another live trainer holds the lock.
    ``stale_owner`` is the previous holder's record when a dead trainer's lock was taken over.
    """

    def __init__(self, log_dir: str):
        self.path = os.path.join(log_dir, LOCK_FILE)
        self.stale_owner: dict | None = None
        self._file = None

    def __enter__(self) -> RunLock:
        try:
            storage.makedirs(os.path.dirname(self.path))
        except OSError as err:
            folder = os.path.dirname(self.path)
            why = "a file, not a folder" if storage.isfile(folder) else err.strerror
            raise UsageError(f"--log_dir {folder}: {why}") from err
        if storage.is_url(self.path):
            return self._enter_store()
        while self._file is None:
            try:
                handle = open(self.path, "a+")
            except OSError as err:
                raise UsageError(f"--log_dir {os.path.dirname(self.path)}: {err.strerror}") from err
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                held = isinstance(err, BlockingIOError)  # by another trainer
                if not held and err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    handle.close()
                    raise
                owner = _read(handle)  # no flock here: fall back to asking whether the pid lives
                if held or _alive_here(owner):
                    handle.close()
                    raise UsageError(self._busy(owner)) from None
            # The holder we waited on may have unlinked the file between our open and our lock:
            # then we hold a lock on a name nobody else will open, so try again.
            if _same_file(handle, self.path):
                self._file = handle
            else:
                handle.close()
        self._record(_read(self._file))
        return self

    def _enter_store(self) -> RunLock:
        """The convention of an object store: a live owner's record refuses, a dead one's
        (on this host) is taken over."""
        owner = _parse(documents.read_text(self.path, "run lock") or "{}", self.path)
        if _alive_here(owner):
            raise UsageError(self._busy(owner))
        self._file = storage.open(self.path, "w")
        self._record(owner)
        self._file.close()
        return self

    def _record(self, previous: dict) -> None:
        """Write this trainer's record over ``previous`` (kept as ``stale_owner``)."""
        if previous.get("pid") is not None:
            self.stale_owner = previous
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        try:
            if hasattr(self._file, "truncate"):
                self._file.seek(0)
                self._file.truncate()
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        except OSError as err:  # a full disk: the run could not write anything anyway
            self.__exit__()
            raise RunError(f"cannot write the lock file {self.path} ({err.strerror})") from err

    def __exit__(self, *exc) -> None:
        if self._file is None:
            return
        # An unwritable or vanished log_dir must not hide the run's own error; nor may closing,
        # which fails when the record never reached a full disk (it flushes it again).
        with contextlib.suppress(OSError):
            storage.remove(self.path)  # while still locked: nobody can take a lock being removed
        with contextlib.suppress(OSError):
            self._file.close()
        self._file = None

    def _busy(self, owner: dict) -> str:
        who = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}"
        gone = "; if it is not running, delete the lock" if storage.is_url(self.path) else ""
        return (
            f"--log_dir {os.path.dirname(self.path)} is in use by another trainer ({who}, "
            f"lock {self.path}): stop it first or use another --log_dir{gone}"
        )


def _read(handle) -> dict:
    handle.seek(0)
    return _parse(handle.read(), handle.name)


def _parse(text: str, name: str) -> dict:
    try:
        return documents.parse(text or "{}", name, "run lock")
    except UsageError:
        return {}  # a lock file cut short by a crash while being written, or not ours


def _same_file(handle, path: str) -> bool:
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


def _alive_here(owner: dict) -> bool:
    """True when ``owner`` names a running process on this host (other hosts cannot be asked)."""
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    if owner.get("host") != socket.gethostname():
        return True  # cannot check another machine's pids: assume it still runs
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    return True
