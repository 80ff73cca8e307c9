"""Figure 5: peak memory of VGG16 training against its arithmetic, and no growth over time.

``python -m bench.memory`` (about 2 minutes on 2 cores).

- VGG16 at 224 px, batch 8, fp32, ``--synthetic``, 3 steps through ``run_train.py``: its peak
  RSS (the kernel's count for that process, so it includes start-up and the final checkpoint)
  less the RSS of the small run below (TensorFlow's own footprint), against what the math
  needs: weights, gradients and momentum (3 x 4 bytes x 138M parameters = 3 x 553 MB) plus one
  batch of activations (every layer's output, kept for the backward pass).
- The small VGG of figure 3 on the demo dataset: RSS after 50 and after 500 steps.

Target (issue 8): RSS after 500 steps <= 1.05x RSS after 50 steps (no leak).
"""

from __future__ import annotations

import sys
import tempfile
import time

import numpy as np

from bench import common
from vgg_keras.api import build_vgg
from vgg_keras.compat import tf
from vgg_keras.tools import demo

NAME = "memory"
MB = 1_000_000  # decimal, as the issue writes 553 MB


def arithmetic_bytes(image_size: int, width: float, classes: int, batch: int) -> dict:
    """Bytes the fp32 math needs: parameters x 3, and one batch of layer outputs."""
    with tf.Graph().as_default():  # shapes only: no variable is ever initialised
        model = build_vgg("vgg16", classes, image_size, width)
        params = int(sum(np.prod(w.shape) for w in model.trainable_weights))
        outputs = sum(int(np.prod(layer.output.shape[1:])) for layer in model.layers[1:])
    return {"params": params, "state": 3 * 4 * params, "activations": 4 * batch * outputs}


def vgg16_peak(quick: bool, log_dir: str) -> tuple[int, int, dict]:
    """(peak RSS, highest RSS seen between steps, arithmetic) of a short VGG16 run."""
    size, width, classes = (32, 0.0625, 10) if quick else (224, 1.0, 1000)
    seen = [0]

    def sample(_record: dict, pid: int) -> None:
        seen[0] = max(seen[0], common.rss_bytes(pid))

    run = common.run_train(
        ["--synthetic", "--mode", "train", "--batch_size", "8", "--max_train_steps", "3"]
        + ["--image_size", str(size), "--width_multiplier", str(width)]
        + ["--class_num", str(classes), "--iterations_per_loop", "1", "--display_every", "1"],
        log_dir,
        on_record=sample,
    )
    return run.peak_rss_bytes, seen[0], arithmetic_bytes(size, width, classes, 8)


def rss_over_steps(at: tuple[int, int], data_dir: str, log_dir: str) -> dict[int, int]:
    """RSS of the small run when its metrics.jsonl reaches each step in ``at``.

    The run goes on 100 steps past the last one, so it is still alive when the line is read.
    """
    rss = {}

    def sample(record: dict, pid: int) -> None:
        if record["step"] in at and pid:
            rss[record["step"]] = common.rss_bytes(pid)

    common.run_train(
        ["--data_dir", data_dir, "--mode", "train", *common.SMALL_NET]
        + ["--batch_size", str(common.SMALL_BATCH), "--max_train_steps", str(at[1] + 100)]
        + ["--iterations_per_loop", "1", "--display_every", str(at[0])],
        log_dir,
        on_record=sample,
    )
    return rss


def run(quick: bool) -> dict:
    start = time.perf_counter()
    at = (10, 60) if quick else (50, 500)
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        demo.build(f"{tmp}/demo")
        rss = rss_over_steps(at, f"{tmp}/demo", f"{tmp}/small")
        peak, between_steps, need = vgg16_peak(quick, f"{tmp}/vgg16")
    runtime = rss[at[0]]
    arithmetic = need["state"] + need["activations"]
    growth = common.ratio(rss[at[1]], rss[at[0]])
    rows = [
        common.row("weights + gradients + momentum", need["state"] / MB, "MB"),
        common.row("activations (batch 8, fp32)", need["activations"] / MB, "MB"),
        common.row("VGG16 peak RSS", peak / MB, "MB"),
        common.row("VGG16 RSS between steps", between_steps / MB, "MB"),
        common.row(
            "VGG16 peak RSS - small run's RSS",
            (peak - runtime) / MB,
            "MB",
            common.ratio(peak - runtime, arithmetic),
            "this / arithmetic",
        ),
        common.row(f"small net RSS after {at[0]} steps", rss[at[0]] / MB, "MB"),
        common.row(
            f"small net RSS after {at[1]} steps",
            rss[at[1]] / MB,
            "MB",
            growth,
            f"this / after {at[0]}",
        ),
    ]
    return common.figure(
        NAME,
        "Figure 5: memory, VGG16 at batch 8 (fp32) and the small net over time",
        quick,
        time.perf_counter() - start,
        rows,
        [common.target(f"RSS after {at[1]} / after {at[0]} steps", growth, 1.05, at_most=True)],
        params=need["params"],
    )


def main(argv: list[str] | None = None) -> int:
    args = common.parser(__doc__).parse_args(argv)
    return common.finish(NAME, run(args.quick), args.out)


if __name__ == "__main__":
    sys.exit(main())
