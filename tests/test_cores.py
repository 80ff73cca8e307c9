"""cores.py: work split per core follows the cores the process may use, not the machine's."""

from __future__ import annotations

import os

import pytest

from vgg_keras import cores


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU affinity is Linux's")
def test_a_process_given_one_core_of_many_counts_one():
    """Slurm and taskset restrict a process's affinity; input decoding and the converter's
    processes count what is left."""
    allowed = os.sched_getaffinity(0)  # this thread's, which sched_setaffinity(0) changes alone
    try:
        os.sched_setaffinity(0, {min(allowed)})
        assert cores.usable() == 1
    finally:
        os.sched_setaffinity(0, allowed)
    assert cores.usable() == len(allowed)
