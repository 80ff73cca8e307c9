"""The training graph and Session loop: the loss against a hand computation, loop sinking equal to
single steps, the exact stop step, resume (global_step, LR, input stream, keep_checkpoint_max),
refusing another configuration's log folder, and mixed precision.

Runs are real: a tiny VGG16 (width 0.0625, 32 px) on the demo TFRecords, real checkpoints.
"""

from __future__ import annotations

import collections
import os

import numpy as np
import pytest

from vgg_keras import checkpoints, compat, training
from vgg_keras.compat import keras, tf, v1
from vgg_keras.config import make_config
from vgg_keras.data import pipeline
from vgg_keras.errors import UsageError
from vgg_keras.reporting import read_metrics


def checkpoint_steps(log_dir) -> list[int]:
    return [checkpoints.checkpoint_step(p) for p in checkpoints.list_checkpoints(str(log_dir))]


def final_variables(log_dir) -> dict[str, np.ndarray]:
    """Every variable (weights, momentum slots, global_step) of the newest checkpoint."""
    reader = tf.train.load_checkpoint(checkpoints.latest_checkpoint(str(log_dir)))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def assert_same_variables(left: dict, right: dict) -> None:
    assert left.keys() == right.keys()
    for name in left:
        np.testing.assert_allclose(left[name], right[name], rtol=1e-6, atol=1e-7, err_msg=name)


# ---------------------------------------------------------------------------------------------
# Loss


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
        loss = training.cross_entropy(
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


def test_weight_decay_loss_is_half_sum_of_squares_of_kernels_or_all_weights():
    init = keras.initializers.RandomNormal(stddev=0.5, seed=1)
    with tf.Graph().as_default() as graph:
        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(3, kernel_initializer=init, bias_initializer=init, name="fc1")
        outputs = keras.layers.Dense(2, kernel_initializer=init, bias_initializer=init)
        model = keras.Model(inputs, outputs(hidden(inputs)))
        kernels_only = training.weight_decay_loss(model, 1e-2)
        with_biases = training.weight_decay_loss(model, 1e-2, decay_biases=True)
        no_decay = training.weight_decay_loss(model, 0.0)
        init_op = v1.global_variables_initializer()
    with v1.Session(graph=graph) as sess:
        sess.run(init_op)
        values = dict(zip([w.name for w in model.weights], sess.run(model.weights)))
        got = sess.run([kernels_only, with_biases, no_decay])
    assert all(np.abs(v).sum() > 0 for v in values.values()), "biases must be non-zero to tell"
    kernels = sum((v.astype(np.float64) ** 2).sum() / 2 for n, v in values.items() if "kernel" in n)
    everything = sum((v.astype(np.float64) ** 2).sum() / 2 for v in values.values())
    np.testing.assert_allclose(got, [1e-2 * kernels, 1e-2 * everything, 0.0], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Loop sinking


@pytest.fixture(scope="module")
def sunk_and_single(train_tiny, tmp_path_factory):
    """The same 7 steps run as single steps and as calls of 3 sunk steps (3 + 3 + 1)."""
    single, sunk = tmp_path_factory.mktemp("single"), tmp_path_factory.mktemp("sunk")
    assert train_tiny(single, max_train_steps=7, iterations_per_loop=1)[0] == 0
    assert train_tiny(sunk, max_train_steps=7, iterations_per_loop=3, display_every=3)[0] == 0
    return single, sunk


def test_sunk_steps_give_the_weights_of_single_steps(sunk_and_single):
    single, sunk = (final_variables(d) for d in sunk_and_single)
    # The comparison means something only if training moved the weights.
    assert np.abs(single["predictions/kernel/Momentum"]).max() > 1e-3
    assert_same_variables(single, sunk)


def test_sunk_run_stops_exactly_at_max_train_steps(sunk_and_single):
    single, sunk = sunk_and_single
    assert checkpoint_steps(single) == checkpoint_steps(sunk) == [7]
    assert [r["step"] for r in read_metrics(single)] == [1, 2, 3, 4, 5, 6, 7]
    assert [r["step"] for r in read_metrics(sunk)] == [3, 6, 7]
    # Each call reports its last step's values: the same as the single steps at 3, 6 and 7.
    by_step = {r["step"]: r for r in read_metrics(single)}
    for record in read_metrics(sunk):
        for key in ("loss", "total_loss", "lr"):
            assert record[key] == pytest.approx(by_step[record["step"]][key], rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Resume


@pytest.fixture(scope="module")
def resumed(train_tiny, tmp_path_factory):
    """6 steps, then a second invocation to 12 on the same log_dir, beside an uninterrupted 12.

    Calls of 2 sunk steps, a checkpoint every 2 steps, 2 kept, a log line every 2 steps.
    """
    settings = dict(
        iterations_per_loop=2, display_every=2, save_checkpoints_steps=2, keep_checkpoint_max=2
    )
    interrupted, straight = tmp_path_factory.mktemp("resumed"), tmp_path_factory.mktemp("straight")
    assert train_tiny(interrupted, max_train_steps=6, **settings)[0] == 0
    first_checkpoints = checkpoint_steps(interrupted)
    assert train_tiny(interrupted, max_train_steps=12, **settings)[0] == 0
    assert train_tiny(straight, max_train_steps=12, **settings)[0] == 0
    return interrupted, straight, first_checkpoints


def test_resume_continues_global_step_without_repeating_steps(resumed):
    interrupted, _, _ = resumed
    assert [r["step"] for r in read_metrics(interrupted)] == [2, 4, 6, 8, 10, 12]
    with open(os.path.join(interrupted, "train.log")) as f:
        assert f"resumed from {interrupted}/model.ckpt-6 at step 6" in f.read()


def test_resume_continues_the_learning_rate_and_the_input_stream(resumed):
    interrupted, straight, _ = resumed
    after, reference = read_metrics(interrupted), read_metrics(straight)
    assert [r["step"] for r in reference] == [r["step"] for r in after]
    # The demo's warmup raises the LR every step: a restarted global_step would show here.
    assert after[3]["lr"] > after[2]["lr"]
    for got, expected in zip(after, reference):
        # Same LR (the schedule at that global_step) and same loss (the same batch).
        assert got["lr"] == pytest.approx(expected["lr"], rel=1e-7), got["step"]
        assert got["loss"] == pytest.approx(expected["loss"], rel=1e-6), got["step"]


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(resumed):
    interrupted, straight, _ = resumed
    assert_same_variables(final_variables(interrupted), final_variables(straight))


def test_keep_checkpoint_max_holds_across_resume(resumed):
    interrupted, _, first_checkpoints = resumed
    assert first_checkpoints == [4, 6]
    assert checkpoint_steps(interrupted) == [10, 12]
    index_files = [n for n in os.listdir(interrupted) if n.endswith(".index")]
    assert sorted(index_files) == ["model.ckpt-10.index", "model.ckpt-12.index"]


def test_a_log_dir_holding_another_network_is_refused(resumed, demo_dir):
    interrupted, _, _ = resumed
    config = make_config(
        "demo", data_dir=demo_dir, log_dir=str(interrupted), width_multiplier=0.125, mode="train"
    )
    with pytest.raises(UsageError, match=r"holds a run with width_multiplier=0\.0625"):
        training.train(config)
    assert checkpoint_steps(interrupted) == [10, 12], "nothing was touched"


# ---------------------------------------------------------------------------------------------
# Mixed precision


@pytest.mark.parametrize(("precision", "compute"), [("bf16", tf.bfloat16), ("fp16", tf.float16)])
def test_mixed_precision_graph_computes_in_half_and_keeps_float32_logits(
    demo_dir, precision, compute
):
    config = make_config(
        "demo", data_dir=demo_dir, width_multiplier=0.0625, precision=precision, log_dir="unused"
    )
    split = pipeline.load_split(demo_dir, "train")
    try:
        tg = training.build_train_graph(
            config, lambda *_worker: pipeline.train_dataset(split, 8, 32, 10), 10.0, 8
        )
    finally:
        compat.set_precision_policy("fp32")
    dtypes = collections.Counter(
        (op.type, op.outputs[0].dtype)
        for op in tg.graph.get_operations()
        if op.type in ("Conv2D", "MatMul")
    )
    assert dtypes[("Conv2D", compute)] > 0 and dtypes[("Conv2D", tf.float32)] == 0
    assert tg.model.output.dtype == tf.float32
    assert all(v.dtype == tf.float32 for v in tg.model.weights), "variables stay float32"
    assert tg.step_fetches["loss"].dtype == tf.float32


def test_bf16_run_trains_like_fp32(train_tiny, tmp_path):
    # The first 30 steps of this small run barely move the loss (by about 0.06, depending on
    # the augmentation drawn), so bf16 is held to fp32's own curve rather than to a fixed drop.
    losses = {}
    for precision in ("fp32", "bf16"):
        code, _ = train_tiny(
            tmp_path / precision,
            precision=precision,
            width_multiplier=0.125,
            warmup_epochs=0.0,
            max_train_steps=30,
            iterations_per_loop=5,
            display_every=5,
        )
        assert code == 0
        losses[precision] = [r["loss"] for r in read_metrics(tmp_path / precision)]
    bf16, fp32 = np.array(losses["bf16"]), np.array(losses["fp32"])
    assert len(bf16) == 6 and np.isfinite(bf16).all()
    assert bf16[-1] < bf16[0] - 0.03, losses
    np.testing.assert_allclose(bf16, fp32, atol=0.03)


def test_fp16_run_uses_dynamic_loss_scaling_and_stays_finite(train_tiny, tmp_path):
    # fp16 convolutions are emulated on CPUs and slow: a few small steps.
    code, _ = train_tiny(tmp_path, precision="fp16", batch_size=8, max_train_steps=3)
    assert code == 0
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert np.isfinite([r["total_loss"] for r in records]).all()
    variables = final_variables(tmp_path)
    assert variables["current_loss_scale"] > 1  # the dynamic loss scale is saved and resumed
    assert variables["block1_conv1/kernel"].dtype == np.float32
