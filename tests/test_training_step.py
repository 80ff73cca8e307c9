"""What one step of the training graph does to the weights, computed independently.

The update must be Nesterov-momentum SGD (TensorFlow's form: ``a = m*a + g``,
``w -= lr * (g + m*a)``) on the mean cross-entropy against smoothed labels plus
``weight_decay * sum(w**2) / 2`` over the kernels (``--decay_biases``: every variable); each of those flags must reach the
graph.
The gradient is taken of a loss written here from scratch (log-softmax, hand-smoothed one-hot
labels, the decay sum) in a separate graph; the optimizer step is numpy.  fp16: an overflowing
gradient halves the dynamic loss scale and leaves the weights alone.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import demo_config

from vgg_keras import clock, compat, distribute, train_graph
from vgg_keras.api import build_vgg
from vgg_keras.compat import tf, v1

BATCH, SIZE, CLASSES, LR = 8, 32, 10, 0.05


def _config(**overrides):
    values = dict(
        data_dir="unused",
        log_dir="unused",
        width_multiplier=0.0625,
        lr=LR,
        lr_schedule="piecewise",
        lr_boundaries=[1000.0],
        batch_size=BATCH,
        warmup_epochs=0.0,
        weight_decay=1e-4,
        clip_grad_norm=0.0,  # the reference's update; the demo clips
        seed=5,
    )
    values.update(overrides)
    return demo_config(**values)


def _batch(scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = (scale * rng.standard_normal((BATCH, SIZE, SIZE, 3))).astype(np.float32)
    return images, (np.arange(BATCH) % CLASSES).astype(np.int32)


def _train_steps(config, steps: int, scale: float = 1.0, save_to: str | None = None):
    """The weights (by name) before and after each of ``steps`` steps on one fixed batch, and
    the graph's other variables at the end (saved as a checkpoint under ``save_to``)."""
    images, labels = _batch(scale)

    def dataset_fn(*_worker):
        return tf.data.Dataset.from_tensors((images, labels)).repeat()

    try:
        plan = clock.plan(config, train_images=100 * BATCH)  # 100 steps per epoch
        dist = distribute.single_device()
        tg = train_graph.build(config, dataset_fn, plan, dist)
    finally:
        compat.set_precision_policy("fp32")
    names = [w.op.name for w in tg.model.trainable_weights]
    history = []
    with v1.Session(graph=tg.graph) as sess:
        sess.run(tg.init_op)
        sess.run(tg.iterator_init)
        history.append(dict(zip(names, sess.run(tg.model.trainable_weights))))
        grad_norms = []
        for _ in range(steps):
            out = sess.run(tg.step_fetches, {tg.measure_grad_norm: True})
            grad_norms.append(float(out["grad_norm"]))
            history.append(dict(zip(names, sess.run(tg.model.trainable_weights))))
        others = {
            v.op.name: sess.run(v)
            for v in tg.graph.get_collection(v1.GraphKeys.GLOBAL_VARIABLES)
            if v.op.name in ("global_step", "skipped_steps", "current_loss_scale")
        }
        others["grad_norms"] = grad_norms
        if save_to:
            with tg.graph.as_default():
                tg.saver.save(sess, save_to, global_step=int(others["global_step"]))
    return history, others


def _gradients(config, weights: dict) -> dict:
    """d/dw of mean CE(smoothed one-hot) + decay * sum(w^2)/2 over kernels (and biases with
    --decay_biases), at ``weights``, written without the project's loss functions."""
    images, labels = _batch()
    o = config.optimizer
    eps = o.label_smoothing
    targets = np.full((BATCH, CLASSES), eps / CLASSES, np.float32)
    targets[np.arange(BATCH), labels] += 1.0 - eps
    with tf.Graph().as_default() as graph:
        model = build_vgg("vgg16", CLASSES, SIZE, config.network.width_multiplier, dense_init="he")
        logits = model(tf.constant(images), training=False)
        cross_entropy = -tf.reduce_mean(tf.reduce_sum(targets * tf.nn.log_softmax(logits), axis=1))
        decayed = [w for w in model.trainable_weights if "kernel" in w.op.name or o.decay_biases]
        decay = o.weight_decay * tf.add_n([tf.reduce_sum(tf.square(w)) for w in decayed]) / 2
        grads = tf.gradients(cross_entropy + decay, model.trainable_weights)
        names = [w.op.name for w in model.trainable_weights]
        with v1.Session(graph=graph) as sess:
            for w in model.trainable_weights:
                w.load(weights[w.op.name], sess)
            return dict(zip(names, sess.run(grads)))


def _global_norm(grads: dict) -> float:
    return float(np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in grads.values())))


def _clipped(grads: dict, clip_norm: float) -> dict:
    """``grads`` scaled to a global norm of at most ``clip_norm`` (0: as they are)."""
    if clip_norm <= 0:
        return grads
    factor = min(1.0, clip_norm / _global_norm(grads))
    return {name: g * factor for name, g in grads.items()}


def _expected_steps(config, history: list[dict], steps: int) -> list[dict]:
    """Each step's weights from the previous step's by numpy momentum SGD."""
    o = config.optimizer
    m = o.momentum
    accumulators = {name: np.zeros_like(w) for name, w in history[0].items()}
    expected = []
    for step in range(steps):
        before = history[step]
        grads = _clipped(_gradients(config, before), o.clip_grad_norm)
        after = {}
        for name, w in before.items():
            accumulators[name] = m * accumulators[name] + grads[name]
            if o.use_nesterov:
                after[name] = w - LR * (grads[name] + m * accumulators[name])
            else:
                after[name] = w - LR * accumulators[name]
        expected.append(after)
    return expected


def _assert_updates_close(before: dict, got: dict, want: dict, what: str) -> None:
    for name in before:
        np.testing.assert_allclose(
            got[name] - before[name], want[name] - before[name], rtol=2e-3, atol=2e-7,
            err_msg=f"{what}: {name}",
        )  # fmt: skip


@pytest.fixture(scope="module")
def default_steps():
    config = _config()
    history, _ = _train_steps(config, 2)
    return config, history


def test_two_steps_are_nesterov_momentum_sgd_on_the_smoothed_loss_plus_decay(default_steps):
    config, history = default_steps
    o = config.optimizer
    assert (o.momentum, o.use_nesterov, o.label_smoothing) == (0.9, True, 0.1)
    expected = _expected_steps(config, history, 2)
    for step in range(2):  # the second step also checks the momentum accumulated by the first
        _assert_updates_close(history[step], history[step + 1], expected[step], f"step {step + 1}")


@pytest.mark.parametrize(
    "change",
    [
        {"momentum": 0.5},
        {"use_nesterov": False},
        {"label_smoothing": 0.0},
        {"weight_decay": 0.05},
        {"decay_biases": True, "weight_decay": 0.05},
        {"clip_grad_norm": 0.5},  # the first step's gradient norm is 1.6
    ],
    ids=lambda change: ",".join(change),
)
def test_each_optimizer_and_loss_flag_reaches_the_update(default_steps, change):
    _, default_history = default_steps
    config = _config(**change)
    history, _ = _train_steps(config, 2)
    expected = _expected_steps(config, history, 2)
    for step in range(2):
        _assert_updates_close(history[step], history[step + 1], expected[step], str(change))
    # The change is visible: the update is not the default one.
    final, default_final = history[2], default_history[2]
    assert any(
        not np.allclose(final[n] - history[0][n], default_final[n] - history[0][n], rtol=2e-2)
        for n in final
    ), change


def test_the_logged_gradient_norm_is_the_norm_before_clipping():
    config = _config(clip_grad_norm=0.5)
    history, others = _train_steps(config, 2)
    for step in range(2):
        norm = _global_norm(_gradients(config, history[step]))
        assert norm > 2 * config.optimizer.clip_grad_norm  # the step was clipped
        assert others["grad_norms"][step] == pytest.approx(norm, rel=1e-3)


def test_fp16_overflow_halves_the_loss_scale_skips_the_update_and_the_scale_is_resumed(
    train_tiny, tmp_path
):
    """Images scaled by 1e4 overflow the fp16 gradients at the initial scale 2^15: each such
    step is skipped (weights unchanged) and halves the scale.  A run resumed from there keeps
    the halved scale (one good step does not change it)."""
    config = _config(precision="fp16")
    history, others = _train_steps(config, 2, scale=1e4, save_to=str(tmp_path / "model.ckpt"))
    for name, before in history[0].items():
        assert np.array_equal(history[2][name], before), name
    assert others["current_loss_scale"] == 2.0**15 / 4
    step = int(others["global_step"])

    code, _ = train_tiny(tmp_path, precision="fp16", batch_size=8, max_train_steps=step + 1)
    assert code == 0
    reader = tf.train.load_checkpoint(str(tmp_path / f"model.ckpt-{step + 1}"))
    assert reader.get_tensor("current_loss_scale") == 2.0**15 / 4
    assert not np.array_equal(reader.get_tensor("fc1/kernel"), history[2]["fc1/kernel"])
