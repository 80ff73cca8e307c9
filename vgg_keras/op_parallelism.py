"""How many ops of a step run at once on a CPU: one at a time when each fills the cores alone.

With ``inter_op_parallelism_threads`` 0, TensorFlow runs as many ops at once as the CPU has
cores, and each op spreads over the cores too.  Small networks need that: their ops are too short
to keep every core busy alone (one op at a time trained the demo 7% slower, and the quarter-width
VGG16 at 64 px 5% slower).  Large ones lose by it: two convolutions at once share the cores and
their caches.  On an Intel Xeon with AMX (2 cores), bf16 VGG16 at 224 px trained 5-8% faster one
op at a time at batch 32 and 64 (1,480 and 2,970 GFLOP a core a step), and as fast either way at
batch 8 (370, fp32 too) and for the full-width network at 64 px, batch 32 (120).

So ``--inter_op_threads 0`` means one op at a time for a training step of ``ONE_AT_A_TIME_GFLOP``
a core or more, on a single CPU device.  A strategy's replicas, GPUs and Ascend keep TensorFlow's
choice, and so does evaluation: bf16 VGG16 at 224 px evaluated at batch 64 took the same time
either way.
"""

from __future__ import annotations

from vgg_keras.compat import keras

ONE_AT_A_TIME_GFLOP = 500.0  # a session step's work a core, between 370 (no gain) and 1,480


def forward_flops_per_image(model: keras.Model) -> float:
    """2 x the multiply-adds of the model's convolutions and fully connected layers."""
    macs = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, channels_out = layer.output.shape.as_list()
            kernel_h, kernel_w = layer.kernel_size
            channels_in = layer.input.shape.as_list()[-1]
            macs += height * width * kernel_h * kernel_w * channels_in * channels_out
        elif isinstance(layer, keras.layers.Dense):
            macs += layer.input.shape.as_list()[-1] * layer.units
    return 2.0 * macs


def training_flops_per_image(model: keras.Model) -> float:
    """A training step's work per image: the forward pass, the inputs' gradients and the
    weights' gradients, each as much as the forward pass."""
    return 3 * forward_flops_per_image(model)


def inter_op_threads(requested: int, step_flops: float, cores: int) -> int:
    """``requested`` (--inter_op_threads) unless 0; then 1 where one session step's ops
    (``step_flops``, one replica's) come to ONE_AT_A_TIME_GFLOP a core or more, else 0
    (TensorFlow's choice: as many ops at once as cores)."""
    if requested:
        return requested
    return 1 if step_flops / max(cores, 1) >= ONE_AT_A_TIME_GFLOP * 1e9 else 0
