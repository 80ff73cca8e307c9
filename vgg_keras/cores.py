"""The CPU cores this process may run on, for work split per core (input decoding, the
converter's processes).  No TensorFlow here: the converter parses its flags without it."""

from __future__ import annotations

import os


def usable() -> int:
    """The process's CPU affinity where the platform has one: a Slurm job, taskset or a container
    may give fewer cores than the machine has, and work beyond them only queues (and holds
    memory: a decoded image, a converter process with its own TensorFlow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
