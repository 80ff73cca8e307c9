"""compat: what it tells about the host (the bf16 check that guards against emulated bf16)."""

from __future__ import annotations

import pytest

from vgg_keras import compat


@pytest.mark.parametrize(
    "flags, gpus, fast",
    [
        ({"avx2", "fma"}, 0, False),  # AMD EPYC (Zen 2/3), older Xeons: bf16 is emulated
        ({"avx2", "avx512f", "avx512_bf16"}, 0, True),  # Cooper Lake, Zen 4
        ({"avx2", "avx512f", "amx_bf16", "amx_tile"}, 0, True),  # Sapphire Rapids
        ({"avx2"}, 1, True),  # a GPU does the arithmetic
        (set(), 0, True),  # no /proc/cpuinfo: cannot tell, no warning
    ],
)
def test_fast_bf16_follows_the_cpu_flags_and_gpus(monkeypatch, flags, gpus, fast):
    monkeypatch.setattr(compat, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(compat, "gpu_count", lambda: gpus)
    assert compat.fast_bf16() is (fast and not compat.TF1)  # TF 1.15 emulates bf16 anywhere


def test_cpu_flags_reads_this_machine():
    flags = compat.cpu_flags()
    with open("/proc/cpuinfo") as f:
        has_flags_line = any(line.startswith("flags") for line in f)
    assert bool(flags) == has_flags_line
    if has_flags_line:
        assert "fpu" in flags or "sse2" in flags
