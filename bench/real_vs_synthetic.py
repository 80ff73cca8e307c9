"""Figure 4: the small VGG trained from TFRecords against the same run on --synthetic data.

``python -m bench.real_vs_synthetic`` (about 1 minute on 2 cores).  The network and batch of
figure 3 (VGG16 at 1/16 width, 32 px, batch 8), trained on the embedded demo dataset (the
scikit-learn digits as JPEG TFRecord shards, built into a temporary folder) with the default
--iterations_per_loop; the baseline is the same run with ``--synthetic``.  The ratio is what the
input pipeline costs on this machine, where it shares the cores with the training step.

No target in issue 8: it is there to be read.
"""

from __future__ import annotations

import sys
import tempfile
import time

from bench import common
from vgg_keras.tools import demo

NAME = "real_vs_synthetic"


def images_per_second(
    data: list[str], warmup: int, steps: int, log_dir: str
) -> tuple[float, float | None]:
    """(images/s, images per CPU-second) after ``warmup`` steps (see TrainRun.rates)."""
    until = warmup + steps
    run = common.run_train(
        [*data, "--mode", "train", *common.SMALL_NET, "--batch_size", str(common.SMALL_BATCH)]
        + ["--max_train_steps", str(until + warmup), "--display_every", str(warmup)],
        log_dir,
    )
    return run.rates(warmup, until, common.SMALL_BATCH)


def run(quick: bool) -> dict:
    start = time.perf_counter()
    warmup, steps = (20, 40) if quick else (100, 1500)
    with tempfile.TemporaryDirectory(prefix="bench_real_") as tmp:
        data_dir = f"{tmp}/demo"
        demo.build(data_dir)
        real = images_per_second(["--data_dir", data_dir], warmup, steps, f"{tmp}/real")
        synthetic = images_per_second(["--synthetic"], warmup, steps, f"{tmp}/synthetic")
    rows = [
        common.row("--synthetic", synthetic[0], "images/s", per_cpu_second=synthetic[1]),
        common.row(
            "TFRecords (demo digits)",
            real[0],
            "images/s",
            common.ratio(real[0], synthetic[0]),
            "this / synthetic",
            per_cpu_second=real[1],
            ratio_cpu=common.ratio(real[1], synthetic[1]) if real[1] and synthetic[1] else None,
        ),
    ]
    return common.figure(
        NAME,
        f"Figure 4: real data vs --synthetic, VGG16 x1/16 at 32 px, batch {common.SMALL_BATCH}",
        quick,
        time.perf_counter() - start,
        rows,
        [],
        timed_steps=steps,
    )


def main(argv: list[str] | None = None) -> int:
    args = common.parser(__doc__).parse_args(argv)
    return common.finish(NAME, run(args.quick), args.out)


if __name__ == "__main__":
    sys.exit(main())
