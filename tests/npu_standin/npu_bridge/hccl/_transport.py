"""Test stand-in only (no such module in the real ``npu_bridge``): how the stand-in's HCCL
collectives travel between the rank processes of one job on one host.

HCCL finds its peers through the environment the launch scripts set: ``RANK_ID``,
``RANK_SIZE`` and ``RANK_TABLE_FILE``.  The stand-in does the same; rank 0 serves a small hub on
a Unix socket whose name is derived from the rank table's path, every rank (rank 0 included)
sends it its part of each collective and gets the result back once every rank has sent its
part.  A collective is matched across ranks by its op name and by how many times this process
has run that op, so every rank must run the same graph ops the same number of times, which is
what HCCL requires too.

Why not TensorFlow's own collective ops: they need every rank's session to run on a gRPC server
of one cluster, while an Ascend rank runs an in-process session (the device, not TensorFlow,
does the communication); the stand-in must work with the session the project creates.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import pickle
import socket
import socketserver
import struct
import tempfile
import threading
import time

import numpy as np

CONNECT_SECONDS = 120.0  # how long a rank waits for rank 0's hub to appear
COLLECTIVE_SECONDS = 300.0  # how long a collective waits for the other ranks

_lock = threading.Lock()
_runs: dict = {}  # op name -> how many times this process has started it
_hub = None


def rank_id() -> int:
    return int(os.environ.get("RANK_ID", "0"))


def rank_size() -> int:
    """RANK_SIZE, else the number of devices in the rank table, else 1."""
    if os.environ.get("RANK_SIZE"):
        return int(os.environ["RANK_SIZE"])
    table = os.environ.get("RANK_TABLE_FILE")
    if not table:
        return 1
    with open(table, encoding="utf-8") as f:
        servers = json.load(f)["server_list"]
    return sum(len(server["device"]) for server in servers)


def _address() -> str:
    table = os.environ.get("RANK_TABLE_FILE")
    if not table:
        raise RuntimeError(
            "HCCL stand-in: RANK_SIZE > 1 needs RANK_TABLE_FILE (as HCCL does) to find the job"
        )
    digest = hashlib.sha1(os.path.abspath(table).encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"npu-standin-hccl-{digest}.sock")


def _send(sock, obj) -> None:
    data = pickle.dumps(obj, protocol=4)
    sock.sendall(struct.pack("!Q", len(data)) + data)


def _receive(sock):
    header = _exactly(sock, 8)
    return pickle.loads(_exactly(sock, struct.unpack("!Q", header)[0]))


def _exactly(sock, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError("HCCL stand-in: a peer closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _combine(kind: str, detail, parts: list):
    """The result every rank receives; ``parts`` in rank order."""
    if kind == "allreduce":
        combine = {"sum": np.add, "prod": np.multiply, "max": np.maximum, "min": np.minimum}
        result = parts[0]
        for part in parts[1:]:
            result = combine[detail](result, part)
        return result
    if kind == "broadcast":
        return parts[detail]
    if kind == "allgather":
        return np.concatenate(parts, axis=0)
    raise ValueError(kind)


class _Hub(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Rank 0's rendezvous: one connection per collective call of a rank."""

    daemon_threads = True

    def __init__(self, path: str, size: int):
        if os.path.exists(path):  # a socket left by an earlier job with this rank table
            os.unlink(path)
        super().__init__(path, _Handler)
        self.size = size
        self.pending: dict = {}
        self.changed = threading.Condition()


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        hub = self.server
        kind, detail, key, rank, value = _receive(self.request)
        deadline = time.monotonic() + COLLECTIVE_SECONDS
        with hub.changed:
            entry = hub.pending.setdefault(key, {"parts": {}, "result": None, "taken": 0})
            entry["parts"][rank] = value
            if len(entry["parts"]) == hub.size:
                parts = [entry["parts"][r] for r in range(hub.size)]
                entry["result"] = _combine(kind, detail, parts)
                hub.changed.notify_all()
            while entry["result"] is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    _send(self.request, RuntimeError(f"HCCL stand-in: timed out in {key}"))
                    return
                hub.changed.wait(left)
            entry["taken"] += 1
            if entry["taken"] == hub.size:
                del hub.pending[key]
        _send(self.request, entry["result"])


def _ensure_hub(path: str, size: int) -> None:
    global _hub
    with _lock:
        if _hub is not None:
            return
        _hub = _Hub(path, size)
        threading.Thread(target=_hub.serve_forever, daemon=True).start()

        def close(hub=_hub) -> None:
            hub.shutdown()
            hub.server_close()
            if os.path.exists(path):
                os.unlink(path)

        atexit.register(close)


def collective(kind: str, detail, name: str, value: np.ndarray) -> np.ndarray:
    """This rank's ``value`` combined with every other rank's (``kind``: allreduce with
    ``detail`` the reduction, broadcast with ``detail`` the root rank, allgather)."""
    size = rank_size()
    if size == 1:
        return _combine(kind, detail, [value])
    with _lock:
        _runs[name] = _runs.get(name, 0) + 1
        key = (name, _runs[name])
    path = _address()
    if rank_id() == 0:
        _ensure_hub(path, size)
    deadline = time.monotonic() + CONNECT_SECONDS
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"HCCL stand-in: rank 0 never served {path}") from None
            time.sleep(0.05)  # rank 0 has not reached its first collective yet
    with sock:
        _send(sock, (kind, detail, key, rank_id(), np.asarray(value)))
        result = _receive(sock)
    if isinstance(result, Exception):
        raise result
    return np.asarray(result, dtype=np.asarray(value).dtype)
