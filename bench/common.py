"""What every benchmark shares: its flags, timing, running ``run_train.py``, results.json, tables."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from vgg_keras import atomic
from vgg_keras.reporting import read_metrics
from vgg_keras.rundir import METRICS_FILE

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results.json"
RUN_TRAIN = REPO / "run_train.py"
# The small VGG of figures 3-5: at 32 px and 1/16 width a step is mostly fixed per-step cost.
SMALL_SETTINGS = {"image_size": 32, "class_num": 10, "width_multiplier": 0.0625}
SMALL_NET = [arg for name, value in SMALL_SETTINGS.items() for arg in (f"--{name}", str(value))]
SMALL_BATCH = 8
# oneDNN's instruction-set cap (inherited by every process a benchmark starts; PyTorch's
# oneDNN reads it too, and ATEN_CPU_CAPABILITY caps PyTorch's own kernels): the kernels another
# CPU kind would run, timed on this one, e.g. ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2.
KERNEL_CAPS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


# ---------------------------------------------------------------------------------------------
# Flags and reporting


def parser(doc: str | None) -> argparse.ArgumentParser:
    """The flags every benchmark takes; ``doc`` is the module docstring (first line = help)."""
    p = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0])
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes: checks the benchmark runs (for tests)"
    )
    p.add_argument("--out", default=str(RESULTS), help="results file (figures are merged in)")
    return p


def row(
    what: str, value: float, unit: str, ratio: float | None = None, ratio_is: str = "", **extra
):
    """One measured line: ``value`` in ``unit``; ``ratio_is`` says what ``ratio`` divides.

    ``extra`` holds further columns (e.g. ``per_cpu_second`` and ``ratio_cpu``), shown in the
    table when any row has them.
    """
    return {
        "what": what,
        "value": value,
        "unit": unit,
        "ratio": ratio,
        "ratio_is": ratio_is,
        **extra,
    }


def target(name: str, value: float | None, threshold: float, at_most: bool = False) -> dict:
    """A target as the issue states it and whether this run met it (None: not measured)."""
    held = None if value is None else (value <= threshold if at_most else value >= threshold)
    return {
        "name": name,
        "value": value,
        "target": f"{'<=' if at_most else '>='} {threshold:g}",
        "held": held,
    }


def ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline else float("nan")


def onednn_bf16() -> bool:
    """False when ONEDNN_MAX_CPU_ISA holds oneDNN below AVX-512-BF16: its bf16 is then
    emulated (capped at AVX-512) or absent (below it: on an AVX-512 CPU training refuses
    bf16, elsewhere Eigen's kernels emulate it)."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    return not cap or cap in ("ALL", "DEFAULT") or any(k in cap for k in ("BF16", "AMX", "AVX10"))


def bf16_kernels() -> bool:
    """Whether the project's bf16 runs on bf16 instructions here: the CPU has them
    (``compat.fast_bf16``) and oneDNN may use them (``onednn_bf16``)."""
    from vgg_keras import compat

    return onednn_bf16() and compat.fast_bf16()


def machine() -> dict:
    """Where the numbers were measured: CPU model, cores, load, library versions."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import numpy
    import PIL

    from vgg_keras import compat  # TensorFlow is imported only where a benchmark needs it

    versions = {
        "tensorflow": compat.TF_RELEASE,
        "keras": compat.keras.__version__,
        "pillow": PIL.__version__,
        "numpy": numpy.__version__,
    }
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        **{cap.lower(): os.environ[cap] for cap in KERNEL_CAPS if os.environ.get(cap)},
        "load_average_1min": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        **versions,
    }


def figure(
    name: str, title: str, quick: bool, seconds: float, rows: list, targets: list, **extra
) -> dict:
    """The JSON object of one figure, as written into results.json under ``figures.<name>``."""
    return {
        "title": title,
        "command": f"python -m bench.{name}" + (" --quick" if quick else ""),
        "quick": quick,
        "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "seconds": round(seconds, 1),
        "rows": rows,
        "targets": targets,
        **extra,
    }


def write_figure(path: str | os.PathLike, name: str, fig: dict) -> None:
    """Merge one figure into the results file, keeping every other figure in it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)  # two benchmarks finishing at once must not lose one
        results = {"figures": {}}
        if path.exists():
            with contextlib.suppress(ValueError), open(path) as f:
                results = json.load(f)
        results.setdefault("figures", {})[name] = fig
        atomic.write_text(str(path), json.dumps(results, indent=1) + "\n")
    finally:
        os.close(folder)  # releases the lock


def _number(value) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def format_table(fig: dict) -> str:
    """The figure's rows and targets as a fixed-width text table."""
    keys = ["what", "value", "unit", "ratio", "ratio_is"]
    for r in fig["rows"]:
        keys += [k for k in r if k not in keys]
    header = [k.replace("_", " ") for k in keys]
    lines = [[_number(r.get(k)) for k in keys] for r in fig["rows"]]
    widths = [max(len(c) for c in col) for col in zip(header, *lines)]
    out = [fig["title"]]
    if fig.get("skipped"):
        out.append(f"skipped: {fig['skipped']}")
    if fig.get("not_timed"):
        out.append(f"not timed: {fig['not_timed']}")
    for cells in (header, *lines) if lines else ():
        out.append("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
    for t in fig["targets"]:
        verdict = {True: "held", False: "MISSED", None: "not measured"}[t["held"]]
        out.append(f"target {t['name']} {t['target']}: {_number(t['value'])}  {verdict}")
    out.append(f"({fig['seconds']:.0f} s, {fig['command']})")
    return "\n".join(out)


def finish(name: str, fig: dict, out: str) -> int:
    """Print the table, merge the figure into ``out``; a benchmark reports, it does not judge."""
    print(format_table(fig), flush=True)
    write_figure(out, name, fig)
    return 0


# ---------------------------------------------------------------------------------------------
# Timing


def images_per_second(
    next_batch: Callable[[], int], seconds: float, warmup: int = 3
) -> tuple[float, float]:
    """(images per wall second, images per CPU second of this process) of a batch source.

    ``next_batch()`` returns the images it produced.  The CPU rate is the per-core efficiency,
    which a busy machine disturbs far less than the wall-clock rate.  ``warmup`` batches are
    drawn untimed (thread pools, autotuning); then batches are drawn for at least ``seconds``
    and at least three batches.
    """
    for _ in range(warmup):
        next_batch()
    images = batches = 0
    start, start_cpu = time.perf_counter(), time.process_time()
    while batches < 3 or time.perf_counter() - start < seconds:
        images += next_batch()
        batches += 1
    cpu = time.process_time() - start_cpu
    return images / (time.perf_counter() - start), images / cpu


# ---------------------------------------------------------------------------------------------
# run_train.py as a subprocess


@dataclasses.dataclass
class TrainRun:
    """One finished ``run_train.py`` process: its metrics.jsonl records and its resource use.

    ``cpu_seconds[i]`` is the process's CPU time (all threads) when record ``i`` was read, within
    50 ms of its writing; None where that is not known (read together with a later record, or
    after the process ended).
    """

    records: list[dict]
    wall_seconds: float
    peak_rss_bytes: int
    log_dir: str
    cpu_seconds: list[float | None] = dataclasses.field(default_factory=list)

    def train_records(self) -> list[dict]:
        return [r for r in self.records if "fps" in r]

    def eval_records(self) -> list[dict]:
        return [r for r in self.records if "eval_top1" in r]

    def steady_fps(self, after_step: int, batch_size: int, until_step: int | None = None) -> float:
        """Images/s over the log intervals between ``after_step`` (warm-up) and ``until_step``."""
        images = seconds = 0.0
        previous = 0
        for r in self.train_records():
            if (
                previous >= after_step
                and r["fps"] > 0
                and (until_step is None or r["step"] <= until_step)
            ):
                if "interval_seconds" in r:  # the exact figures the line's FPS came from
                    n = r["interval_steps"] * batch_size
                    images, seconds = images + n, seconds + r["interval_seconds"]
                else:
                    n = (r["step"] - previous) * batch_size
                    images, seconds = images + n, seconds + n / r["fps"]
            previous = r["step"]
        if not seconds:
            raise RuntimeError(f"{self.log_dir}: no log interval after step {after_step}")
        return images / seconds

    def rates(
        self, after_step: int, until_step: int, batch_size: int
    ) -> tuple[float, float | None]:
        """(images/s, images per CPU-second) between two logged steps.

        Run one log interval past ``until_step``: the process must still be alive when the line
        for ``until_step`` is read, to stamp its CPU time.
        """
        return (
            self.steady_fps(after_step, batch_size, until_step),
            self.per_cpu_second(after_step, until_step, batch_size),
        )

    def per_cpu_second(self, after_step: int, until_step: int, batch_size: int) -> float | None:
        """Images per CPU-second of the process between two logged steps (None: not sampled).

        A busy machine stretches wall time but hardly the CPU time a step costs, so this rate
        stays comparable between runs that met different load.
        """
        stamps = {
            r["step"]: cpu
            for r, cpu in zip(self.records, self.cpu_seconds)
            if "fps" in r and cpu is not None
        }
        if after_step not in stamps or until_step not in stamps:
            return None  # lines too close together to time apart: a --quick run
        return (until_step - after_step) * batch_size / (stamps[until_step] - stamps[after_step])


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a live process (all its threads), from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident set size of a live process, from /proc (0 once it has gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_train(
    args: list[str],
    log_dir: str,
    *,
    timeout: float = 1200,
    on_record: Callable[[dict, int], None] | None = None,
    env: dict | None = None,
) -> TrainRun:
    """Run ``run_train.py ARGS --log_dir LOG_DIR --progress false`` and wait for it.

    While it runs, each new metrics.jsonl line gets the process's CPU time stamped on it and is
    passed to ``on_record(record, pid)`` (to sample memory at given steps; pid 0 once the
    process has ended); ``env`` adds environment variables.  The peak RSS comes from the kernel's accounting of this one child
    (wait4), so it covers moments no sampling would catch.
    """
    os.makedirs(log_dir, exist_ok=True)
    cmd = [sys.executable, str(RUN_TRAIN), *args, "--log_dir", log_dir, "--progress", "false"]
    console = os.path.join(log_dir, "console.txt")
    metrics = os.path.join(log_dir, METRICS_FILE)
    stamps: list[float | None] = []
    start = time.perf_counter()
    with open(console, "w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, **(env or {})}
        )
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                # (os.waitstatus_to_exitcode is Python >= 3.9)
                signalled = os.WIFSIGNALED(status)
                proc.returncode = -os.WTERMSIG(status) if signalled else os.WEXITSTATUS(status)
                break
            if time.perf_counter() - start > timeout:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"run_train.py timed out after {timeout:.0f} s: {cmd}")
            if os.path.exists(metrics):
                records = read_metrics(log_dir)
                new = records[len(stamps) :]
                # Only the newest line of a poll was written within 50 ms of this CPU reading.
                stamps += [None] * (len(new) - 1) + [cpu_seconds(proc.pid)] if new else []
                for record in new:
                    if on_record:
                        on_record(record, proc.pid)
            time.sleep(0.05)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        with open(console) as f:
            tail = "".join(f.readlines()[-15:])
        raise RuntimeError(f"run_train.py exited {proc.returncode}: {' '.join(cmd)}\n{tail}")
    records = read_metrics(log_dir)
    for record in records[len(stamps) :]:
        stamps.append(None)
        if on_record:
            on_record(record, 0)
    return TrainRun(records, wall, usage.ru_maxrss * 1024, log_dir, stamps)
