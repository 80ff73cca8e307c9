"""The bias gradient in bf16 is the fp32 sum of its rows; fp32 and fp16 keep TensorFlow's."""

import numpy as np
import pytest

from vgg_keras import bias_gradient
from vgg_keras.compat import tf, v1


def _bias_gradient(received: np.ndarray, dtype, ours: bool) -> np.ndarray:
    """d(sum(bias_add(x, b) * received)) / db, with or without ``summed_in_fp32``."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.zeros(received.shape, dtype)
        b = tf.zeros(received.shape[-1:], dtype)
        if ours:
            with bias_gradient.summed_in_fp32():
                y = tf.nn.bias_add(x, b)
        else:
            y = tf.nn.bias_add(x, b)
        (grad,) = tf.gradients(y, [b], grad_ys=tf.cast(tf.constant(received), dtype))
    with v1.Session(graph=graph) as session:
        return session.run(grad).astype(np.float64)


def _received(shape=(8, 64, 64, 16)) -> np.ndarray:
    """A convolution's output gradient: small values with a common offset, so that the sum over
    its 32,768 rows grows far beyond each row, as a real bias gradient's does."""
    rng = np.random.default_rng(0)
    return (0.003 + 0.01 * rng.standard_normal(shape)).astype(np.float32)


def test_a_bf16_bias_gradient_is_its_rows_summed_in_fp32():
    received = _received()
    exact = received.astype(np.float64).sum(axis=(0, 1, 2))
    got = _bias_gradient(received, tf.bfloat16, ours=True)
    # The error is the bf16 rounding of the inputs and of the result (2^-8 relative), no more.
    assert np.abs(got - exact).max() <= 1e-2 * np.abs(exact).max()


def test_tensorflow_sums_bf16_in_bf16_which_is_why_the_step_does_not_use_it():
    received = _received()
    exact = received.astype(np.float64).sum(axis=(0, 1, 2))
    theirs = _bias_gradient(received, tf.bfloat16, ours=False)
    if np.abs(theirs - exact).max() <= 1e-2 * np.abs(exact).max():
        pytest.skip("this TensorFlow sums bf16 bias gradients accurately: the override is moot")
    assert np.abs(theirs - exact).max() > 0.1 * np.abs(exact).max()


@pytest.mark.parametrize("dtype", [tf.float32, tf.float16])
def test_fp32_and_fp16_bias_gradients_are_tensorflows_own_bit_for_bit(dtype):
    received = _received((4, 16, 16, 8))
    ours = _bias_gradient(received, dtype, ours=True)
    theirs = _bias_gradient(received, dtype, ours=False)
    np.testing.assert_array_equal(ours, theirs)
