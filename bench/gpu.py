"""GPU section: VGG16 at batch 256, bf16, XLA, images/s, when a GPU is visible (else skipped).

``python -m bench.gpu``.  ``run_train.py --synthetic --batch_size 256 --precision bf16 --xla``,
images/s after 10 warm-up steps, next to the reference implementation's published figures
(Ascend 910: 1,120 images/s at batch 256; V100: 199 images/s at batch 64), which were measured
elsewhere: the ratio only places this machine among them.
"""

from __future__ import annotations

import sys
import tempfile
import time

from bench import common
from vgg_keras import compat

NAME = "gpu"
PUBLISHED = (("Ascend 910, batch 256 (published)", 1120.0), ("V100, batch 64 (published)", 199.0))


def run(quick: bool) -> dict:
    start = time.perf_counter()
    gpus = compat.gpu_count()
    title = "GPU: VGG16 at 224 px, batch 256, bf16, --xla, --synthetic"
    if not gpus:
        return common.figure(
            NAME, title, quick, time.perf_counter() - start, [], [], skipped="no GPU visible"
        )
    batch, warmup, steps = (16, 2, 3) if quick else (256, 10, 20)
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        run = common.run_train(
            ["--synthetic", "--mode", "train", "--precision", "bf16", "--xla"]
            + ["--batch_size", str(batch), "--max_train_steps", str(warmup + steps)]
            + ["--display_every", str(warmup), "--iterations_per_loop", str(warmup)],
            f"{tmp}/run",
        )
    fps = run.steady_fps(warmup, batch)
    rows = [common.row(f"this machine, {gpus} GPU(s), batch {batch}", fps, "images/s")]
    rows += [
        common.row(name, value, "images/s", common.ratio(fps, value), "this machine / published")
        for name, value in PUBLISHED
    ]
    return common.figure(NAME, title, quick, time.perf_counter() - start, rows, [], gpus=gpus)


def main(argv: list[str] | None = None) -> int:
    args = common.parser(__doc__).parse_args(argv)
    return common.finish(NAME, run(args.quick), args.out)


if __name__ == "__main__":
    sys.exit(main())
