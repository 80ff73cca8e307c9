"""Where a training run's wall time goes: ``run_train.py`` with clocks around its parts.

``python -m bench.demo_profile --preset demo --data_dir DIR --log_dir DIR [more flags]`` runs
the training program in this process, as ``run_train.py`` does, with wall-clock accumulators
wrapped around the loop's parts (graph building, the evaluator's set-up, initialisation, the
training session calls, checkpoint saves, each evaluation's restore, iterator initialisation and
batches), and prints them to stderr when the program returns, with the time the program took
from this process's start.  The time from there to the process's exit is the caller's to
measure (e.g. ``time``); it ends as ``run_train.py`` ends (``commands.exit_now``).  Nothing is written to results.json: this is a profile, not a figure;
docs/performance.md has its breakdown of the demo run.
"""

from __future__ import annotations

import collections
import sys
import time

STARTED = time.perf_counter()

SPENT: dict = collections.defaultdict(float)
CALLS: collections.Counter = collections.Counter()
OP_TIME: collections.Counter = collections.Counter()  # --trace_ops: microseconds by op type


def clock(owner, name: str, label: str) -> None:
    """Replace ``owner.name`` by the same function adding its wall time to SPENT[label]."""
    inner = getattr(owner, name)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            SPENT[label] += time.perf_counter() - start
            CALLS[label] += 1

    setattr(owner, name, timed)


def instrument() -> None:
    from vgg_keras import checkpoints, evaluation, train_graph, training

    clock(training, "train", "training.train (set-up, loop, close)")
    clock(train_graph, "build", "  training graph built")
    clock(evaluation.Evaluator, "__init__", "  evaluator: graph and session")
    clock(training, "_initialise", "  initialisation (init op, iterator)")
    clock(training._Loop, "run", "  the loop")
    clock(training._Loop, "_train_call", "    training session calls")
    clock(training._Loop, "_log", "    log lines")
    clock(training._Loop, "_save", "    checkpoint saves (with the finite check)")
    clock(training._Loop, "_evaluate", "    evaluations (with their save)")
    clock(checkpoints, "restore", "      restore")
    clock(evaluation.Evaluator, "_run_all", "      batches")
    evaluate = evaluation.Evaluator.evaluate

    def evaluate_timed(self, *args, **kwargs):
        run = self.session.run

        def run_timed(fetches, *more, **kwargs_):
            start = time.perf_counter()
            try:
                return run(fetches, *more, **kwargs_)
            finally:
                if fetches is self._init:
                    SPENT["      iterator initialisation"] += time.perf_counter() - start

        self.session.run = run_timed
        try:
            return evaluate(self, *args, **kwargs)
        finally:
            self.session.run = run

    evaluation.Evaluator.evaluate = evaluate_timed


def trace_ops(first: int = 21, calls: int = 10) -> None:
    """Trace training calls ``first`` .. ``first + calls - 1``; sum each kernel's time by op
    type into OP_TIME (microseconds, summed over both cores' threads)."""
    from vgg_keras import training
    from vgg_keras.compat import v1

    inner, seen = training._Loop._train_call, [0]

    def traced(self):
        seen[0] += 1
        if not first <= seen[0] < first + calls:
            return inner(self)
        run = self.session.run

        def run_traced(fetches, feed=None):
            options = v1.RunOptions(trace_level=v1.RunOptions.FULL_TRACE)
            metadata = v1.RunMetadata()
            out = run(fetches, feed, options=options, run_metadata=metadata)
            for device in metadata.step_stats.dev_stats:
                for node in device.node_stats:
                    kind = node.timeline_label.split("(")[0].split("=")[-1].strip() or "?"
                    OP_TIME[kind] += node.op_end_rel_micros - node.op_start_rel_micros
            return out

        # Through session.run, made for these calls (the loop's own calls are callables).
        self.session.run, saved = run_traced, (self._calls, self.through_run)
        self._calls, self.through_run = {}, True
        try:
            return inner(self)
        finally:
            del self.session.run
            self._calls, self.through_run = saved

    training._Loop._train_call = traced


def main(argv: list[str] | None = None) -> int:
    from vgg_keras import commands

    argv = list(sys.argv[1:] if argv is None else argv)
    instrument()
    if "--trace_ops" in argv:
        argv.remove("--trace_ops")
        trace_ops()
    code = commands.main("train", argv)
    total = time.perf_counter() - STARTED
    SPENT["  before training.train: imports (TensorFlow), flags, config"] = (
        total - SPENT["training.train (set-up, loop, close)"]
    )
    print(
        f"profile: {total:.2f} s from this process's start to the program's return", file=sys.stderr
    )
    for label, seconds in SPENT.items():
        calls = f" ({CALLS[label]} calls)" if CALLS[label] > 1 else ""
        print(f"profile: {label:58s} {seconds:8.2f} s{calls}", file=sys.stderr)
    total_ops = sum(OP_TIME.values())
    for kind, micros in OP_TIME.most_common(12):
        share = f"{micros / 1e3:8.1f} ms  {100 * micros / total_ops:4.1f}%"
        print(f"profile: traced calls, op {kind:44s} {share}", file=sys.stderr)
    return code


if __name__ == "__main__":
    from vgg_keras import commands

    commands.exit_now(main())  # as run_train.py ends
