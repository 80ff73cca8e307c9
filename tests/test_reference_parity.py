"""Equal to the reference implementation, against numbers measured from its own code.

``bench/reference_parity.py`` ran the reference's Python files (Ascend ModelZoo, the seed VGG19
and the VGG16 copy) on TF 1.15, with stand-ins only for ``npu_bridge``, and stored what they
compute in ``tests/data/reference/golden.json``, with the rules that make its inputs (see
docs/reference.md).  Here the project computes the same things on the running stack: the
learning rate at every step of the 150-epoch run, the initialiser's distribution, the weight
decay term, the variable names of its checkpoints, its evaluation and training input on real
JPEGs (``--input_mode reference``), and one and three training steps of the full VGG16 and
VGG19 from the same weights and batch.
"""

from __future__ import annotations

import base64
import functools
import json
import os

import numpy as np
import pytest
from conftest import REPO_ROOT, stack_neutral

from vgg_keras import arch, clock, compat, distribute, schedules, train_graph
from vgg_keras.api import build_vgg
from vgg_keras.compat import tf, v1
from vgg_keras.config import resolve
from vgg_keras.data import preprocess

FIXTURES = os.path.join(REPO_ROOT, "tests", "data", "reference")
SIZE = 224


@functools.lru_cache(maxsize=None)
def golden() -> dict:
    with open(os.path.join(FIXTURES, "golden.json")) as f:
        return json.load(f)


def samples(record: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(record["samples_f32le_b64"]), "<f4")


SAMPLE_INDICES = np.sort(np.random.RandomState(0).choice(SIZE * SIZE * 3, 4096, replace=False))


def expand(runs, length: int) -> np.ndarray:
    table = np.empty(length, np.float32)
    for (start, value), (end, _) in zip(runs, [*runs[1:], [length, None]]):
        table[start:end] = value
    return table


@pytest.mark.parametrize(
    ("table", "schedule"), [("seed_vgg19", "piecewise"), ("vgg16_copy", "cosine_epoch")]
)
def test_the_learning_rate_is_the_references_at_every_step_of_its_run(table, schedule):
    measured = golden()["lr"][table]
    optimizer = resolve(settings={"synthetic": True, "lr_schedule": schedule}).optimizer
    steps_per_epoch = clock.plan(resolve(settings={"synthetic": True}), None).steps_per_epoch
    assert steps_per_epoch == int(golden()["lr"]["nsteps_per_epoch"]["256"])
    with tf.Graph().as_default() as graph:
        step = tf.range(measured["length"], dtype=tf.int64)
        lr = schedules.learning_rate(step, optimizer, steps_per_epoch, 256)
    with v1.Session(graph=graph) as sess:
        got = sess.run(lr)
    np.testing.assert_array_equal(got, expand(measured["runs"], measured["length"]))


def test_the_convolutions_start_from_the_references_truncated_distribution():
    """Same shape as the measurement: a 3x3, 256 -> 512 kernel, He on fan-out."""
    measured = golden()["initializer"]["conv"]
    levels = measured["quantile_levels"]
    with tf.Graph().as_default():
        model = build_vgg("vgg16", 10, 32)
        kernel = model.get_layer("block4_conv1").kernel
        assert kernel.shape.as_list() == measured["shape"]
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            values = sess.run(kernel) / measured["target_std"]
    assert values.std() == pytest.approx(1.0, abs=0.003)
    for seed, theirs in measured["by_graph_seed"].items():
        assert np.abs(values).max() == pytest.approx(theirs["max_abs_over_target"], abs=1e-3), seed
        # 1.18 M samples each: the quantiles of two draws agree to a few thousandths.
        np.testing.assert_allclose(
            np.quantile(values, levels), theirs["quantiles_over_target"], atol=0.01
        )


def test_checkpoint_names_map_onto_the_references_variables():
    """Every variable of the reference's training graph (its checkpoints' contents) is one of
    ours under arch.py's mapping: kernels, biases, their Momentum slots, global_step."""
    for name in ("vgg16", "vgg19"):
        theirs = {n: shape for n, shape, _ in golden()["variables"][name]}
        mapping = arch.get(name).reference_names()
        with tf.Graph().as_default():
            model = build_vgg(name, 1000, SIZE)
            ours = {}
            for layer in model.layers:
                for w in layer.weights:
                    scope = f"{mapping[layer.name]}/{w.op.name.split('/')[-1]}"
                    ours[scope] = ours[scope + "/Momentum"] = w.shape.as_list()
        ours["global_step"] = []
        assert ours == theirs


@pytest.mark.parametrize("fixture", sorted(golden()["eval_input"]["by_fixture"]))
def test_reference_input_mode_evaluates_the_references_tensors(fixture):
    record = golden()["eval_input"]["by_fixture"][fixture]
    with open(os.path.join(FIXTURES, fixture), "rb") as f:
        jpeg = tf.constant(f.read())
    reference = resolve(settings={"input_mode": "reference"}, need_data=False)
    ours = preprocess.eval_image(jpeg, reference.network, reference.input).numpy()
    np.testing.assert_allclose(ours.reshape(-1)[SAMPLE_INDICES], samples(record), atol=1e-4)
    np.testing.assert_allclose(ours.mean(axis=(0, 1)), record["mean"], atol=1e-4)
    np.testing.assert_allclose(ours.std(axis=(0, 1)), record["std"], atol=1e-4)
    # The standard input (aspect kept, half-pixel centres, TensorFlow's decode) is another one.
    standard = resolve(settings={}, need_data=False)
    other = preprocess.eval_image(jpeg, standard.network, standard.input).numpy()
    assert np.abs(other.reshape(-1)[SAMPLE_INDICES] - samples(record)).max() > 0.05


@pytest.mark.parametrize("fixture", sorted(golden()["train_input"]["by_fixture"]))
def test_reference_input_mode_crops_the_references_training_tensors(fixture):
    """The crop window the reference's sampler chose (fed to both), then decode, resize and
    normalise as the reference does; the flip is the project's per-image one (a departure)."""
    network = resolve(settings={}, need_data=False).network
    with open(os.path.join(FIXTURES, fixture), "rb") as f:
        jpeg = tf.constant(f.read())
    for seed, record in golden()["train_input"]["by_fixture"][fixture]["by_seed"].items():
        window = tf.constant(record["window"])
        ours = preprocess.crop_flip_normalize(
            jpeg, window, tf.constant(False), network, "reference"
        )
        np.testing.assert_allclose(
            ours.numpy().reshape(-1)[SAMPLE_INDICES], samples(record), atol=1e-4, err_msg=seed
        )
        flipped = preprocess.crop_flip_normalize(
            jpeg, window, tf.constant(True), network, "reference"
        )
        np.testing.assert_array_equal(flipped.numpy(), ours.numpy()[:, ::-1])


# ---------------------------------------------------------------------------------------------
# Training steps of the full networks


def rule_weights(model) -> list[np.ndarray]:
    """golden.json's weights: layer L's kernel and bias from RandomState(1000 + L) / (2000 + L)."""
    values = []
    layers = [layer for layer in model.layers if layer.weights]
    for index, layer in enumerate(layers):
        kernel, bias = (w.shape.as_list() for w in layer.weights)
        std = np.sqrt(2 / (9 * kernel[-1])) if len(kernel) == 4 else 0.01
        rng = np.random.RandomState(1000 + index)
        values.append(rng.standard_normal(kernel).astype(np.float32) * np.float32(std))
        values.append(
            np.random.RandomState(2000 + index).uniform(-0.05, 0.05, bias).astype(np.float32)
        )
    return values


# One full-size network a stack: VGG19 on TF 1.15, the reference's stack, VGG16 on TF 2.  They
# are the same code with another row of the table; each stack's run checks that stack's kernels.
VGG19_ON_TF1 = pytest.mark.skipif(not compat.TF1, reason="VGG19's parity: the TF 1.15 suite's")


@pytest.fixture(
    scope="module",
    params=[pytest.param("vgg16", marks=stack_neutral), pytest.param("vgg19", marks=VGG19_ON_TF1)],
)
def our_steps(request):
    return run_steps(request.param)


def run_steps(name: str):
    """Three steps of the default recipe (dropout off, as measured) on golden.json's batch from
    its weights: (name, each step's outputs, weights before / after 1 / after 3, the
    reference's names of the trainable variables)."""
    config = resolve(settings={"synthetic": True, "arch": name, "dropout": 0.0, "batch_size": 2})
    images = np.random.RandomState(7).standard_normal((2, SIZE, SIZE, 3)).astype(np.float32)
    labels = np.array([3, 997], np.int32)
    plan = clock.plan(config, None)
    dist = distribute.single_device()
    tg = train_graph.build(
        config,
        lambda *_: tf.data.Dataset.from_tensors((images, labels)).repeat(),
        plan,
        dist,
    )
    compat.set_precision_policy("fp32")
    mapping = arch.get(name).reference_names()
    names = [
        f"{mapping[w.op.name.split('/')[0]]}/{w.op.name.split('/')[1]}"
        for w in tg.model.trainable_weights
    ]
    outputs, weights = [], []
    with v1.Session(graph=tg.graph) as sess:
        sess.run(tg.init_op)
        from vgg_keras import checkpoints

        checkpoints.assign(sess, tg.model.trainable_weights, rule_weights(tg.model))
        sess.run(tg.iterator_init)
        weights.append(sess.run(tg.model.trainable_weights))
        for step in range(3):
            outputs.append(sess.run(tg.step_fetches))
            if step in (0, 2):
                weights.append(sess.run(tg.model.trainable_weights))
    return name, outputs, weights, names


# On TF 1.15 (the reference's stack, its kernels) the project computes the reference's numbers
# exactly, on the CPU kind the golden values come from (AMD EPYC with AVX-512).  TF 1.15's
# kernels differ by CPU kind (the vector units they use): on an AVX2-only AMD EPYC
# the reference's own code (bench/reference_parity.py run there) gives a third-step loss of
# 4.28606 (VGG16) and 12.13931 (VGG19) against the golden 4.28261 and 12.13117, and the project
# gives 4.28606 and 12.13931 there, equal again.  Elsewhere, and on TF 2, the kernels round
# otherwise: oneDNN's gradient differs by up to 4e-4 (relative, a layer's update norm) after
# one step, Eigen's (TF_ENABLE_ONEDNN_OPTS=0) by 3e-7; this batch, whose loss falls by a quarter
# in a step (VGG19's rises to 12 in the third), amplifies that to 2e-5 in the second step's
# loss, 1e-3 in the third's and 7e-3 in a layer's update (measured on AMD EPYC with AVX-512,
# both kernels).
GOLDEN_KERNELS = compat.TF1 and "avx512f" in compat.cpu_flags()
TOLERANCE = {  # (each step's loss, update after one step, after three), relative
    True: ((1e-5, 1e-5, 1e-5), 1e-5, 1e-4),
    False: ((1e-5, 1e-4, 3e-3), 2e-3, 2e-2),
}[GOLDEN_KERNELS]


@pytest.mark.slow
def test_one_and_three_steps_equal_the_references(our_steps):
    name, outputs, (start, after_1, after_3), names = our_steps
    measured = golden()["steps"][name]
    losses, one_step, three_steps = TOLERANCE
    for step, (out, theirs, rel) in enumerate(zip(outputs, measured["per_step"], losses), 1):
        assert out["loss"] == pytest.approx(theirs["loss"], rel=rel), step
        assert out["total_loss"] == pytest.approx(theirs["total_loss_float64"], rel=rel), step
        assert out["lr"] == theirs["lr"]
    for k, (variable, w0) in enumerate(zip(names, start)):
        record = measured["by_variable"][variable]
        assert record["k"] == k and list(w0.shape) == record["shape"]
        indices = np.random.RandomState(3000 + k).randint(0, w0.size, 16)
        for after, key, rel in ((after_1, "after_1", one_step), (after_3, "after_3", three_steps)):
            delta = after[k].astype(np.float64) - w0
            moved = rel * record[key]["delta_norm"]  # an update off by rel moves the norm so much
            assert np.linalg.norm(after[k].astype(np.float64)) == pytest.approx(
                record[key]["norm"], rel=1e-5, abs=moved
            ), variable
            # The update itself, not only the weights it moved (which hardly change).
            assert np.linalg.norm(delta) == pytest.approx(record[key]["delta_norm"], rel=rel), (
                variable
            )
            if key == "after_1" or GOLDEN_KERNELS:  # (three steps of rounding: the norms say it)
                scale = np.abs(record[key]["delta"]).max()
                np.testing.assert_allclose(
                    delta.reshape(-1)[indices], record[key]["delta"], rtol=0, atol=10 * rel * scale,
                    err_msg=f"{variable} {key}",
                )  # fmt: skip


@pytest.mark.slow
def test_the_weight_decay_term_is_the_references(our_steps):
    """The reference's ``1e-4 * sum(l2_loss(v))`` over every trainable variable, biases too."""
    name, outputs, _, _ = our_steps
    measured = golden()["steps"][name]["per_step"][0]
    decay = golden()["weight_decay"][name]
    assert decay["includes_biases"] and decay["count"] == decay["trainable_count"]
    assert outputs[0]["total_loss"] - outputs[0]["loss"] == pytest.approx(
        measured["l2_float64"], rel=1e-5
    )
