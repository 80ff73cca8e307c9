"""Figure 3: loop sinking, steps/s of a small VGG with --iterations_per_loop 1, 10 and 100.

``python -m bench.loop_sinking`` (about 3 minutes on 2 cores).  A VGG16 at 1/16 width on 32
px ``--synthetic`` batches of 8, where the per-call host overhead is as large a share of a
step as it gets on a CPU.  Steps/s come from metrics.jsonl (a line every 100 steps) after the
first 100 steps; the baseline is the same run with one step per session call.  A second
baseline is the bare graph of figure 2 built for this network (the same model, loss, weight
decay and Nesterov momentum on one constant batch, a plain ``sess.run([train_op, loss])`` per
step, in this process): what the loop costs against no loop machinery at all.  The four run
in turn, five rounds of 500 timed steps each; every rate is the median of its rounds, every
ratio the median of the ratios within each round, so that a machine's drift during the
minutes of a figure meets all four alike.  (--quick: loops of 1 and 20 over 40 steps, one
round.)

Targets: --iterations_per_loop 100 >= 1.0x the bare one-step graph, and
--iterations_per_loop 1 within 3% of it (issue 33).  (Against --iterations_per_loop 1 the
loop saves only the host's per-call cost, small on a CPU: no target.)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

from bench import common, train_compute
from vgg_keras import config

NAME = "loop_sinking"
LOOPS = (1, 10, 100)
ROUNDS = 5  # each configuration's runs, alternately


def steps_per_second(
    loop: int, warmup: int, steps: int, log_dir: str
) -> tuple[float, float | None]:
    """(steps/s, steps per CPU-second) after ``warmup`` steps.

    A log line every ``warmup`` steps (a multiple of every loop), and one interval past the
    timed ones (see TrainRun.rates).
    """
    until = warmup + steps
    run = common.run_train(
        ["--synthetic", "--mode", "train", *common.SMALL_NET]
        + ["--batch_size", str(common.SMALL_BATCH), "--max_train_steps", str(until + warmup)]
        + ["--iterations_per_loop", str(loop), "--display_every", str(warmup)],
        log_dir,
    )
    images, per_cpu = run.rates(warmup, until, common.SMALL_BATCH)
    return images / common.SMALL_BATCH, per_cpu and per_cpu / common.SMALL_BATCH


def bare_steps_per_second(warmup: int, steps: int) -> tuple[float, float]:
    """(steps/s, steps per CPU-second) of figure 2's bare graph for the same small network."""
    settings = {"synthetic": True, "batch_size": common.SMALL_BATCH, **common.SMALL_SETTINGS}
    cfg = config.resolve(settings=settings)
    images, per_cpu, _ = train_compute.bare_rates(cfg, {"warmup": warmup, "steps": steps}, "fp32")
    return images / common.SMALL_BATCH, per_cpu / common.SMALL_BATCH


def _median(rates: list) -> tuple[float, float | None]:
    """The median (steps/s, steps per CPU-second) of several rounds' (either may be None)."""
    walls = [wall for wall, _ in rates]
    cpus = [cpu for _, cpu in rates if cpu]
    return statistics.median(walls), statistics.median(cpus) if cpus else None


def _paired(rounds: list, this, baseline, part: int = 0) -> float | None:
    """The median over rounds of ``this`` against ``baseline`` measured in the same round (a
    drift of the machine between rounds cancels); ``part`` 1: per CPU-second."""
    ratios = [
        common.ratio(this(r)[part], baseline(r)[part])
        for r in rounds
        if this(r)[part] and baseline(r)[part]
    ]
    return statistics.median(ratios) if ratios else None


def run(quick: bool) -> dict:
    start = time.perf_counter()
    warmup, steps, rounds = (20, 40, 1) if quick else (100, 500, ROUNDS)
    loops = LOOPS if not quick else (1, 20)
    measured = []  # per round: {loop: (steps/s, per CPU-second), "bare": the bare graph's}
    with tempfile.TemporaryDirectory(prefix="bench_loop_") as tmp:
        for i in range(rounds):
            runs = {
                loop: steps_per_second(loop, warmup, steps, f"{tmp}/{i}_{loop}") for loop in loops
            }
            measured.append({**runs, "bare": bare_steps_per_second(warmup, steps)})

    def against(loop, baseline, part=0):
        return _paired(measured, lambda r: r[loop], lambda r: r[baseline], part)

    last = max(loops)
    rates = {loop: _median([r[loop] for r in measured]) for loop in loops}
    rows = [
        common.row(
            f"--iterations_per_loop {loop}",
            wall,
            "steps/s",
            against(loop, 1) if loop > 1 else None,
            "this / 1" if loop > 1 else "",
            per_cpu_second=cpu,
            ratio_cpu=against(loop, 1, 1) if loop > 1 else None,
        )
        for loop, (wall, cpu) in rates.items()
    ]
    bare = _median([r["bare"] for r in measured])
    rows.append(
        common.row(
            "bare one-step graph (sess.run per step)",
            bare[0],
            "steps/s",
            against(last, "bare"),
            f"{last} / this",
            per_cpu_second=bare[1],
            ratio_cpu=against(last, "bare", 1),
        )
    )
    targets = [
        common.target(f"iterations_per_loop {last} / bare graph", rows[-1]["ratio"], 1.0),
        common.target("iterations_per_loop 1 / bare graph", against(1, "bare"), 0.97),
    ]
    return common.figure(
        NAME,
        f"Figure 3: loop sinking, VGG16 x1/16 at 32 px, batch {common.SMALL_BATCH}, --synthetic",
        quick,
        time.perf_counter() - start,
        rows,
        targets,
        timed_steps=steps * rounds,
        # Each round's steps/s, for a reader to see the spread.
        rounds=[{str(k): round(v[0], 1) for k, v in r.items()} for r in measured],
    )


def main(argv: list[str] | None = None) -> int:
    args = common.parser(__doc__).parse_args(argv)
    return common.finish(NAME, run(args.quick), args.out)


if __name__ == "__main__":
    sys.exit(main())
