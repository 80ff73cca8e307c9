"""The gradient of a bias in bf16, summed in fp32.

TensorFlow's CPU kernel for ``BiasAddGrad`` sums a bf16 gradient in bf16 (TensorFlow 2.21 and
1.15.5 alike): over the batch and every pixel of a convolution's output, 1.6 M rows a channel for
VGG16's first layers at batch 32, so once the partial sum is large each new row is rounded
away, and the bias gradient can be off by most of its value.  The same sum as a product with a
row of ones is a bf16 matmul, which accumulates in fp32 (oneDNN's on TensorFlow 2, Eigen's on
1.15): the error is the output's bf16 rounding, and on AMX cores it took a third of the time.
fp32 and fp16 keep TensorFlow's kernel, which sums them accurately.
"""

from __future__ import annotations

import contextlib

from vgg_keras.compat import tf, v1

GRADIENT = "VggKerasBiasAddGrad"


@tf.RegisterGradient(GRADIENT)
def _bias_add_grad(op, received):
    """(the input's gradient, the bias's): TensorFlow's own except for bf16 channels-last."""
    data_format = op.get_attr("data_format")
    if received.dtype != tf.bfloat16 or data_format in (b"NCHW", "NCHW"):
        return received, tf.raw_ops.BiasAddGrad(out_backprop=received, data_format=data_format)
    channels = tf.shape(received)[-1]
    rows = tf.reshape(received, [-1, channels])
    ones = tf.ones([1, tf.shape(rows)[0]], tf.bfloat16)
    return received, tf.reshape(tf.matmul(ones, rows), [channels])


@contextlib.contextmanager
def summed_in_fp32():
    """The bias additions built inside differentiate with ``_bias_add_grad``.

    The forward ops are unchanged (Grappler still fuses each convolution with its bias and
    ReLU); only the gradient graph that ``tf.gradients`` builds for them differs.
    """
    with v1.get_default_graph().gradient_override_map({"BiasAdd": GRADIENT}):
        yield
