"""Every benchmark, one after another, each in its own process: ``make bench`` (< 15 min, 2 cores).

``python -m bench.run_all [--quick] [--only input_pipeline,memory] [--out FILE]`` runs them and
prints a markdown summary of the results file (the README's table); ``--report`` only prints
that summary from an existing results file.  A benchmark that misses a target still exits 0; one
that crashes makes this exit 1 after the others have run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from bench import common

FIGURES = (
    "input_pipeline",
    "train_compute",
    "loop_sinking",
    "real_vs_synthetic",
    "memory",
    "time_to_accuracy",
    "demo_robustness",
    "torch_peer",
    "gpu",
)
STANDARD_KEYS = ("what", "value", "unit", "ratio", "ratio_is")


def markdown(results: dict) -> str:
    """The README's performance section: each figure's rows, then every target in one table."""
    figures = results.get("figures", {})
    lines = []
    for fig in figures.values():
        m = fig["machine"]
        caps = "".join(f", {c}={m[c.lower()]}" for c in common.KERNEL_CAPS if m.get(c.lower()))
        lines += [
            f"**{fig['title']}**: `{fig['command']}` ({fig['seconds']:.0f} s; {m['cpu']}{caps}, "
            f"{m['cores']} cores, load {m['load_average_1min']}, TF {m.get('tensorflow', '?')}, "
            f"{fig['measured_at']})",
            "",
        ]
        if fig.get("skipped"):
            lines += [f"skipped: {fig['skipped']}", ""]
            continue
        if fig.get("not_timed"):
            lines += [f"not timed: {fig['not_timed']}", ""]
        extra = [k for k in fig["rows"][0] if k not in STANDARD_KEYS] if fig["rows"] else []
        lines += [
            "| "
            + " | ".join(["measure", "value", "ratio", *(k.replace("_", " ") for k in extra)])
            + " |",
            "|---|---:|---:|" + "---:|" * len(extra),
        ]
        for r in fig["rows"]:
            ratio = f"{r['ratio']:.2f} ({r['ratio_is']})" if r["ratio"] is not None else ""
            cells = [r["what"], f"{_value(r['value'])} {r['unit']}", ratio]
            cells += [_value(r.get(k)) for k in extra]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["| figure | target | measured | held |", "|---|---|---:|---|"]
    for name, fig in figures.items():
        for t in fig["targets"]:
            held = {True: "yes", False: "**no**", None: "-"}[t["held"]]
            lines.append(f"| {name} | {t['name']} {t['target']} | {_value(t['value'])} | {held} |")
    return "\n".join(lines)


def _value(value) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--only", default="", help="comma-separated figures (default: all)")
    p.add_argument("--report", action="store_true", help="only print the summary of --out")
    args = p.parse_args(argv)
    chosen = [f for f in args.only.split(",") if f] or list(FIGURES)
    unknown = sorted(set(chosen) - set(FIGURES))
    if unknown:
        p.error(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(FIGURES)}")
    failed = []
    if not args.report:
        for name in chosen:
            start = time.perf_counter()
            cmd = [sys.executable, "-m", f"bench.{name}", "--out", args.out]
            code = subprocess.call(cmd + (["--quick"] if args.quick else []), cwd=common.REPO)
            print(f"bench.{name}: exit {code}, {time.perf_counter() - start:.0f} s\n", flush=True)
            if code:
                failed.append(name)
    with open(args.out) as f:
        print(markdown(json.load(f)))
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
