"""The training graph: the loss against a hand computation, the weight-decay set, mixed precision
(half-precision convolutions, float32 logits and variables), batch norm's moving statistics
updated by every step (single and sunk), and the step's named outputs."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from conftest import demo_config

from vgg_keras import clock, compat, distribute, train_graph
from vgg_keras.compat import keras, tf, v1
from vgg_keras.data import pipeline


def numpy_log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16])
def test_cross_entropy_with_label_smoothing_matches_hand_computation(smoothing, dtype):
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, (6, 5)).astype(np.float32)
    labels = np.array([0, 4, 2, 2, 1, 3], np.int32)
    with tf.Graph().as_default() as graph:
        loss = train_graph.cross_entropy(
            tf.cast(tf.constant(logits), dtype), tf.constant(labels), 5, smoothing
        )
    with v1.Session(graph=graph) as sess:
        got = sess.run(loss)
    assert loss.dtype == tf.float32, "the loss is float32 whatever the logits' dtype"
    if dtype == tf.bfloat16:
        logits = tf.cast(tf.cast(logits, tf.bfloat16), tf.float32).numpy()
    targets = np.full((6, 5), smoothing / 5) + (1 - smoothing) * np.eye(5)[labels]
    expected = -(targets * numpy_log_softmax(logits.astype(np.float64))).sum(axis=1).mean()
    assert got == pytest.approx(expected, rel=1e-5)


def test_weight_decay_is_half_the_sum_of_squares_of_every_variable_or_the_kernels():
    """The reference: ``weight_decay * add_n([tf.nn.l2_loss(v) for v in trainable_variables()])``."""
    init = keras.initializers.RandomNormal(stddev=0.5, seed=1)
    with tf.Graph().as_default() as graph:
        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(3, kernel_initializer=init, bias_initializer=init, name="fc1")
        outputs = keras.layers.Dense(2, kernel_initializer=init, bias_initializer=init)
        model = keras.Model(inputs, outputs(hidden(inputs)))
        decays = {
            (rate, biases): train_graph.weight_decay_loss(
                model, demo_config(weight_decay=rate, decay_biases=biases).optimizer
            )
            for rate in (1e-2, 0.0)
            for biases in (True, False)
        }
        init_op = v1.global_variables_initializer()
    with v1.Session(graph=graph) as sess:
        sess.run(init_op)
        values = dict(zip([w.name for w in model.weights], sess.run(model.weights)))
        got = sess.run(decays)
    assert all(np.abs(v).sum() > 0 for v in values.values()), "biases must be non-zero to tell"
    kernels = sum((v.astype(np.float64) ** 2).sum() / 2 for n, v in values.items() if "kernel" in n)
    everything = sum((v.astype(np.float64) ** 2).sum() / 2 for v in values.values())
    assert got[(1e-2, True)] == pytest.approx(1e-2 * everything, rel=1e-6)
    assert got[(1e-2, False)] == pytest.approx(1e-2 * kernels, rel=1e-6)
    assert got[(0.0, True)] == got[(0.0, False)] == 0.0


def _graph(config, dataset_fn, precision=None):
    plan = clock.plan(config, 10 * config.input.batch_size, precision=precision or "fp32")
    try:
        return train_graph.build(config, dataset_fn, plan, distribute.single_device())
    finally:
        compat.set_precision_policy("fp32")


@pytest.mark.parametrize(("precision", "compute"), [("bf16", tf.bfloat16), ("fp16", tf.float16)])
def test_mixed_precision_graph_computes_in_half_and_keeps_float32_logits(
    demo_dir, precision, compute
):
    config = demo_config(data_dir=demo_dir, width_multiplier=0.0625, precision=precision)
    split = pipeline.load_split(config.input, "train")
    tg = _graph(
        config,
        lambda *_worker: pipeline.train_dataset(split, config.network, config.input, 0),
        precision,
    )
    ops = tg.graph.get_operations()
    dtypes = collections.Counter(
        (op.type, op.outputs[0].dtype) for op in ops if op.type in ("Conv2D", "MatMul")
    )
    assert dtypes[("Conv2D", compute)] > 0 and dtypes[("Conv2D", tf.float32)] == 0
    # TensorFlow's BiasAddGrad sums bf16 in bf16; the step sums bf16 biases' gradients in fp32.
    graph_def = tg.graph.as_graph_def()  # the step's gradients live in its loop's functions
    nodes = [*graph_def.node, *(n for f in graph_def.library.function for n in f.node_def)]
    bias_sums = collections.Counter(
        tf.as_dtype(n.attr["T"].type) for n in nodes if n.op == "BiasAddGrad"
    )
    # (The classifier computes in fp32: its float32 logits.)
    want = {tf.float32: 1} if compute == tf.bfloat16 else {compute: 15, tf.float32: 1}
    assert bias_sums == want
    assert tg.model.output.dtype == tf.float32
    assert all(v.dtype == tf.float32 for v in tg.model.weights), "variables stay float32"
    assert tg.step_fetches["loss"].dtype == tf.float32
    assert set(tg.step_fetches) == set(train_graph.StepOutputs._fields)


def test_batch_norm_moving_statistics_move_with_every_step():
    """A tf_keras BatchNormalization in a v1 graph leaves UPDATE_OPS empty: the train op must
    run the model's own update ops, in single steps and in the sunk loop alike."""
    config = demo_config(arch="vgg11_bn", width_multiplier=0.0625, batch_size=4)
    rng = np.random.default_rng(0)
    images = (3 + rng.standard_normal((4, 32, 32, 3))).astype(np.float32)
    labels = np.arange(4, dtype=np.int32)
    tg = _graph(config, lambda *_: tf.data.Dataset.from_tensors((images, labels)).repeat())
    layer = tg.model.get_layer("block1_bn1")
    with v1.Session(graph=tg.graph) as sess:
        sess.run(tg.init_op)
        sess.run(tg.iterator_init)
        assert not sess.run(layer.moving_mean).any()
        sess.run(tg.step_fetches)
        one = sess.run(layer.moving_mean)
        sess.run(tg.loop_fetches, {tg.loop_steps: 3})
        four = sess.run([layer.moving_mean, tg.global_step])
    assert np.abs(one).max() > 1e-3, "the first step updated the moving mean"
    assert four[1] == 4
    # Momentum 0.9: after n steps of (nearly) the same batch mean m, the moving mean is
    # (1 - 0.9**n) m; three more steps move it from 0.1 m to 0.3439 m.
    np.testing.assert_allclose(four[0], one * (1 - 0.9**4) / 0.1, rtol=0.05, atol=1e-4)


def test_a_step_the_fp16_loss_scaling_skips_still_counts():
    """Images 100 times too bright: the loss stays finite while the scaled float16 gradients
    overflow, so the loss scaling skips each update.  The step still took its batch: the step
    number counts it (a resume takes the next batch), single and sunk alike."""
    config = demo_config(width_multiplier=0.0625, batch_size=4, precision="fp16")
    rng = np.random.default_rng(0)
    images = (100 * rng.standard_normal((4, 32, 32, 3))).astype(np.float32)
    labels = np.arange(4, dtype=np.int32)
    tg = _graph(config, lambda *_: tf.data.Dataset.from_tensors((images, labels)).repeat(), "fp16")
    (scale,) = [v for v in tg.graph.get_collection("variables") if "loss_scale" in v.name]
    with v1.Session(graph=tg.graph) as sess:
        sess.run(tg.init_op)
        sess.run(tg.iterator_init)
        start = sess.run(tg.model.trainable_weights)
        first_scale = sess.run(scale)
        single = sess.run(tg.step_fetches)
        sunk = sess.run(tg.loop_fetches, {tg.loop_steps: 2})
        end = sess.run(tg.model.trainable_weights)
        assert sess.run(scale) < first_scale, "no update overflowed: the test shows nothing"
    assert np.isfinite(single["total_loss"]) and np.isfinite(sunk["total_loss"])
    assert (single["step"], sunk["step"]) == (1, 3)
    assert all(np.array_equal(a, b) for a, b in zip(start, end)), "every update was skipped"


def _weights_after(config, images, labels, steps: int, sunk: bool = False) -> list:
    tg = _graph(config, lambda *_: tf.data.Dataset.from_tensors((images, labels)).repeat())
    with v1.Session(graph=tg.graph) as sess:
        sess.run(tg.init_op)
        sess.run(tg.iterator_init)
        if sunk:
            sess.run(tg.loop_fetches, {tg.loop_steps: steps})
        else:
            for _ in range(steps):
                sess.run(tg.step_fetches)
        return sess.run(tg.model.trainable_weights + [tg.global_step])


def _update_difference(got: list, want: list, start: list) -> float:
    """The largest difference of two runs' weight updates, relative to the largest update."""
    pairs = list(zip(got[:-1], want[:-1], start[:-1]))
    biggest = max(np.abs(w - s).max() for _, w, s in pairs)
    return max(np.abs((g - s) - (w - s)).max() for g, w, s in pairs) / biggest


def test_four_micro_batches_of_8_are_one_step_of_32():
    """--accumulation_steps 4 with --batch_size 8 takes the steps of --batch_size 32 on the same
    32 images (weight decay counted once, momentum and clipping on the mean gradient), single
    and sunk, to float rounding: another order of the same 32 images differs as much."""
    rng = np.random.default_rng(1)
    images = rng.standard_normal((32, 32, 32, 3)).astype(np.float32)
    labels = (np.arange(32) % 10).astype(np.int32)
    settings = dict(width_multiplier=0.0625, lr=0.05, warmup_epochs=0.0, clip_grad_norm=0.5)
    whole = demo_config(batch_size=32, **settings)
    start = _weights_after(whole, images, labels, 0)
    big = _weights_after(whole, images, labels, 2)
    order = rng.permutation(32)
    rounding = _update_difference(
        _weights_after(whole, images[order], labels[order], 2), big, start
    )
    small = demo_config(batch_size=8, accumulation_steps=4, **settings)
    for sunk in (False, True):
        accumulated = _weights_after(small, images, labels, 2, sunk)
        assert accumulated[-1] == big[-1] == 2, "global_step counts optimizer steps"
        assert _update_difference(accumulated, big, start) < max(3 * rounding, 1e-3)
    one = _weights_after(demo_config(batch_size=8, **settings), images[:8], labels[:8], 2)
    assert _update_difference(one, big, start) > 0.05, "one micro-batch alone differs"
