"""Figure 2: VGG16 training images/s through run_train.py against a bare TF graph, and FLOP/s.

``python -m bench.train_compute`` (about 3 minutes on 2 cores).  Full VGG16 at 224 px, batch 8,
``--synthetic``, fp32 and bf16.  The project's number comes from ``run_train.py`` in its own
process (``--iterations_per_loop 1 --display_every 1``: the loop's most host-heavy setting),
read from metrics.jsonl after the warm-up steps.  The baseline is a bare graph of the same math
(the same Keras model, loss, weight decay and Nesterov momentum; the batch a constant variable)
run by a plain ``sess.run([train_op, loss])`` loop in this process.  (Fetching the loss matters:
without it TensorFlow prunes the weight-decay term's value, 16 L2 reductions over all 138M
weights, about 4% of a bf16 step, which the project computes every step for its NaN check and
log line, as the reference's NanTensorHook did.)  Achieved FLOP/s (training = 3x the
forward pass's 2*MACs, 92.7 GFLOP per 224 px image) is set against a large matmul, through
TensorFlow here and through PyTorch (``bench/torch_demo.py matmul``, with the ``bench`` extra):
the better of the two is the cores' practical peak.

The bf16 efficiency is also measured at the batches a user training on a CPU would choose
between, 32 and 64 (16 and 32 images per core on 2 cores: the recipe's 256 as 8 or 4
accumulated micro-batches), where the cores' kernels are fuller than at 8; the target is on the
faster of the two, the one a user would keep (on an AVX-512-BF16 EPYC 32 was: 0.75x of the
matmul at batch 8, 0.85x at 16, 0.89x at 32, 0.85x at 64; on an Intel Xeon with AMX, 64).

Targets: run_train.py >= 0.97x the bare graph; bf16 >= 1.6x fp32 (issue 8); bf16 VGG training
at the faster user batch >= 0.75x the best bf16 matmul (issue 33), on CPUs with bf16 arithmetic
(AVX-512-BF16 or AMX).
"""

from __future__ import annotations

import sys
import tempfile
import time

from bench import common
from vgg_keras import bias_gradient, compat, config, cores, train_graph
from vgg_keras import model as model_lib
from vgg_keras.compat import tf, v1
from vgg_keras.op_parallelism import training_flops_per_image

NAME = "train_compute"
PRECISIONS = ("fp32", "bf16")
# The learning rate does not change the work of a step.  The recipe's 0.01 drives the loss on
# this one repeated random batch to NaN within 5-9 steps (either --conv_init, both stacks),
# which would stop run_train.py (exit 3) before the timed steps.
LR = 1e-4


def settings(quick: bool) -> dict:
    """Network and step counts: full VGG16, or a tiny one that only proves the code runs."""
    if quick:
        return {
            "image_size": 32,
            "width_multiplier": 0.0625,
            "batch_size": 8,
            "class_num": 10,
            "warmup": 2,
            "steps": 3,
            "matmul": 512,
            "user_batches": (8,),
        }
    return {"image_size": 224, "width_multiplier": 1.0, "batch_size": 8, "class_num": 1000,
            "warmup": 2, "steps": 12, "matmul": 4096, "user_batches": (32, 64)}  # fmt: skip


def project_rates(s: dict, precision: str, log_dir: str) -> tuple[float, float | None]:
    """(images/s, images per CPU-second) of run_train.py after the warm-up steps."""
    timed_until = s["warmup"] + s["steps"]
    run = common.run_train(
        ["--synthetic", "--mode", "train", "--precision", precision]
        + ["--batch_size", str(s["batch_size"]), "--image_size", str(s["image_size"])]
        + ["--width_multiplier", str(s["width_multiplier"]), "--class_num", str(s["class_num"])]
        + ["--max_train_steps", str(timed_until + 1)]
        + ["--iterations_per_loop", "1", "--display_every", "1", "--lr", str(LR)],
        log_dir,
    )
    return run.rates(s["warmup"], timed_until, s["batch_size"])


def bare_rates(cfg: config.Config, s: dict, precision: str) -> tuple[float, float, float]:
    """(images/s, images per CPU-second, training FLOP per image) of the same math in a plain
    sess.run loop."""
    graph = tf.Graph()
    with graph.as_default(), compat.precision_policy(precision):
        v1.set_random_seed(cfg.loop.seed)
        model = model_lib.build(cfg.network, training=True)
        flops = training_flops_per_image(model)
        net, batch = cfg.network, cfg.input.batch_size
        shape = [batch, net.image_size, net.image_size, 3]
        images = v1.Variable(tf.random.stateless_normal(shape, [0, 1]), trainable=False)
        labels = v1.Variable(
            tf.random.stateless_uniform([batch], [0, 2], 0, net.class_num, tf.int32),
            trainable=False,
        )
        step = v1.train.get_or_create_global_step()
        model_lib.set_dropout_seed(model, cfg.loop.seed, step, 0)  # masks per step, as training
        with bias_gradient.summed_in_fp32():  # as the training step differentiates its biases
            logits = model(images.value(), training=True)  # a tensor: Keras casts it for bf16
        o = cfg.optimizer
        loss = train_graph.cross_entropy(logits, labels, net.class_num, o.label_smoothing)
        loss += train_graph.weight_decay_loss(model, o)
        optimizer = v1.train.MomentumOptimizer(o.lr, o.momentum, use_nesterov=o.use_nesterov)
        train_op = optimizer.minimize(loss, step, var_list=model.trainable_weights)
        init = v1.global_variables_initializer()
    with v1.Session(graph=graph) as session:
        session.run(init)
        fetches = (train_op, loss)  # a plain loop reports the loss it trains on
        for _ in range(s["warmup"]):
            session.run(fetches)
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(s["steps"]):
            session.run(fetches)
        seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    images = s["steps"] * cfg.input.batch_size
    return images / seconds, images / cpu, flops


def matmul_flops(n: int, dtype: tf.DType, repeats: int = 3) -> float:
    """FLOP/s of an n x n by n x n matmul, the machine's practical peak for dense math."""
    graph = tf.Graph()
    with graph.as_default():
        a = v1.Variable(tf.random.stateless_normal([n, n], [0, 3], dtype=dtype))
        b = v1.Variable(tf.random.stateless_normal([n, n], [0, 4], dtype=dtype))
        product = tf.reduce_sum(tf.cast(tf.matmul(a, b)[0, :1], tf.float32))
        init = v1.global_variables_initializer()
    with v1.Session(graph=graph) as session:
        session.run(init)
        session.run(product)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            session.run(product)
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def peer_matmul_flops(n: int, precision: str) -> float | None:
    """PyTorch's FLOP/s for the same matmul (its oneDNN/MKL kernels may beat TensorFlow's), or
    None without the ``bench`` extra."""
    from bench import torch_peer  # (it imports this module)

    if not torch_peer.torch_available():
        return None
    result, _ = torch_peer.run_peer(["matmul", "--n", str(n)] + ["--bf16"] * (precision == "bf16"))
    return result["gflops"] * 1e9


def _row(what, rates, other=None, ratio_is="", invert=False) -> dict:
    """A row of images/s with per-CPU-second figures; the ratio is this/other (or other/this)."""

    def ratio(i: int) -> float | None:
        if other is None or rates[i] is None or other[i] is None:
            return None
        return common.ratio(other[i], rates[i]) if invert else common.ratio(rates[i], other[i])

    return common.row(
        what, rates[0], "images/s", ratio(0), ratio_is, per_cpu_second=rates[1], ratio_cpu=ratio(1)
    )


def run(quick: bool) -> dict:
    start = time.perf_counter()
    s = settings(quick)
    cfg = config.resolve(
        settings=dict(
            synthetic=True,
            lr=LR,
            **{k: s[k] for k in ("image_size", "width_multiplier", "batch_size", "class_num")},
        )
    )
    # Emulated bf16 (a CPU without AVX-512-BF16/AMX) runs the full VGG16 at well under 1 image/s:
    # time it only where the hardware has it (--quick's tiny net is fast either way, unless
    # ONEDNN_MAX_CPU_ISA leaves oneDNN no bf16 convolution at all).
    precisions = (
        PRECISIONS if common.bf16_kernels() or quick and common.onednn_bf16() else ("fp32",)
    )
    note = {} if precisions == PRECISIONS else {"not_timed": "bf16: no bf16 kernels here"}
    if note:
        why = "TensorFlow 1.15" if compat.TF1 else "no avx512_bf16/amx_bf16, or capped"
        print(f"bench.{NAME}: {note['not_timed']} ({why}), timing fp32 only")
    ours, bare = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench_compute_") as tmp:
        for precision in precisions:
            # Alternating project and baseline, so that load on a shared machine hits both.
            ours[precision] = project_rates(s, precision, f"{tmp}/{precision}")
            *bare[precision], flops = bare_rates(cfg, s, precision)
        user_rates = {s["batch_size"]: ours.get("bf16", (0.0,))[0]}  # (--quick: the same batch)
        for batch in s["user_batches"] if "bf16" in precisions else ():
            if batch not in user_rates:
                steps = max(4, s["steps"] * s["batch_size"] // batch)
                at_batch = {**s, "batch_size": batch, "steps": steps}
                user_rates[batch] = project_rates(at_batch, "bf16", f"{tmp}/bf16_{batch}")[0]
    rows, targets = [], []
    for precision in precisions:
        if precision == "fp32":
            rows.append(_row("run_train.py fp32", ours["fp32"]))
        else:
            rows.append(
                _row(f"run_train.py {precision}", ours[precision], ours["fp32"], "this / fp32")
            )
            targets.append(common.target(f"run_train.py {precision}/fp32", rows[-1]["ratio"], 1.6))
        rows.append(
            _row(
                f"bare graph {precision}",
                bare[precision],
                ours[precision],
                "run_train / this",
                invert=True,
            )
        )
        targets.append(common.target(f"run_train.py/bare {precision}", rows[-1]["ratio"], 0.97))
    for precision, dtype in (("fp32", tf.float32), ("bf16", tf.bfloat16))[: len(precisions)]:
        n = s["matmul"]
        peaks = {"TensorFlow": matmul_flops(n, dtype), "PyTorch": peer_matmul_flops(n, precision)}
        for who, peak in peaks.items():
            if peak:
                rows.append(common.row(f"matmul {n}^2 {precision}, {who}", peak / 1e9, "GFLOP/s"))
        best = max(p for p in peaks.values() if p)
        achieved = ours[precision][0] * flops
        rows.append(
            common.row(
                f"VGG training {precision}",
                achieved / 1e9,
                "GFLOP/s",
                common.ratio(achieved, best),
                f"this / best matmul {precision}",
            )
        )
        if precision == "bf16":
            user_rows = [
                common.row(
                    f"VGG training bf16, batch {batch} ({batch // cores.usable()} per core)",
                    user_rates[batch] * flops / 1e9,
                    "GFLOP/s",
                    common.ratio(user_rates[batch] * flops, best),
                    "this / best matmul bf16",
                )
                for batch in s["user_batches"]
            ]
            rows += user_rows
            faster = max(user_rows, key=lambda row: row["value"])
            targets.append(
                common.target(
                    "VGG training bf16 at the faster user batch / best bf16 matmul",
                    faster["ratio"],
                    0.75,
                )
            )
    return common.figure(
        NAME,
        f"Figure 2: training compute, VGG16 x{s['width_multiplier']:g} at {s['image_size']} px, "
        f"batch {s['batch_size']}, --synthetic",
        quick,
        time.perf_counter() - start,
        rows,
        targets,
        training_gflop_per_image=flops / 1e9,
        steps={"warmup": s["warmup"], "timed": s["steps"]},
        **note,
    )


def main(argv: list[str] | None = None) -> int:
    args = common.parser(__doc__).parse_args(argv)
    return common.finish(NAME, run(args.quick), args.out)


if __name__ == "__main__":
    sys.exit(main())
