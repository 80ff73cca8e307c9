"""The VGG model: published parameter counts and layer names, width scaling, float32 logits."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from vgg_keras import compat
from vgg_keras.compat import keras, set_precision_policy, tf, v1
from vgg_keras.model import build_vgg, kernel_variables

# The full networks are only graph construction (no weights are allocated), about 0.2 s each.
PUBLISHED = {"vgg16": 138_357_544, "vgg19": 143_667_240}
APPLICATIONS = {"vgg16": "VGG16", "vgg19": "VGG19"}


@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
def test_published_parameter_count(arch):
    with tf.Graph().as_default():
        model = build_vgg(arch, num_classes=1000, image_size=224)
        assert model.count_params() == PUBLISHED[arch]
        assert model.output.shape.as_list() == [None, 1000]


@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
def test_weights_match_keras_applications_by_name_and_shape(arch):
    with tf.Graph().as_default():
        ours = build_vgg(arch, num_classes=1000, image_size=224)
        reference = getattr(keras.applications, APPLICATIONS[arch])(weights=None, include_top=True)

        def weighted(model):
            return [
                (layer.name, [tuple(w.shape) for w in layer.weights])
                for layer in model.layers
                if layer.weights
            ]

        assert weighted(ours) == weighted(reference)
        # Without dropout the layer lists are the same apart from the input layer's name.
        plain = build_vgg(arch, dropout=0.0)
        assert [la.name for la in plain.layers[1:]] == [la.name for la in reference.layers[1:]]


def test_dropout_layers_follow_fc1_and_fc2():
    with tf.Graph().as_default():
        names = [layer.name for layer in build_vgg("vgg16", 10, 32, 0.125, dropout=0.5).layers]
    assert names[-5:] == ["fc1", "dropout1", "fc2", "dropout2", "predictions"]


def test_width_multiplier_scales_every_layer_but_the_logits():
    with tf.Graph().as_default():
        small = build_vgg("vgg16", num_classes=10, image_size=32, width_multiplier=0.125)
        full = build_vgg("vgg16", num_classes=10, image_size=32)
        widths = {layer.name: layer.weights[0].shape[-1] for layer in small.layers if layer.weights}
        assert widths["block1_conv1"] == 8 and widths["block5_conv3"] == 64
        assert widths["fc1"] == widths["fc2"] == 512 and widths["predictions"] == 10
        assert small.count_params() < full.count_params() / 50


def test_kernel_variables_are_the_weight_matrices():
    with tf.Graph().as_default():
        for arch, layers in (("vgg16", 16), ("vgg19", 19)):
            kernels = kernel_variables(build_vgg(arch, 10, 32, 0.125))
            assert len(kernels) == layers
            assert all(len(k.shape) in (2, 4) for k in kernels)


def test_unknown_arch():
    with pytest.raises(ValueError, match="vgg11"):
        build_vgg("vgg11")


def test_logits_are_float32_under_mixed_bfloat16():
    set_precision_policy("bf16")
    try:
        with tf.Graph().as_default():
            model = build_vgg("vgg16", num_classes=10, image_size=32, width_multiplier=0.125)
            assert model.get_layer("block1_conv1").output.dtype == tf.bfloat16
            assert model.get_layer("fc2").output.dtype == tf.bfloat16
            assert model.output.dtype == tf.float32
            assert all(w.dtype == tf.float32 for w in model.weights), "variables stay float32"
    finally:
        set_precision_policy("fp32")
    assert compat.global_policy_name() == "float32"


def _initial_weights(seed):
    with tf.Graph().as_default():
        model = build_vgg("vgg16", 10, 32, 0.125, weight_seed=seed)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            return sess.run(model.weights)


def test_weight_seed_makes_initialisation_reproducible():
    first, again, other = _initial_weights(1), _initial_weights(1), _initial_weights(2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], other[0])
    # Dense kernels are N(0, 0.01).
    fc1 = first[[i for i, w in enumerate(first) if w.shape == (64, 512)][0]]
    assert 0.008 < fc1.std() < 0.012


def test_forward_pass_in_a_session():
    with tf.Graph().as_default():
        model = build_vgg("vgg19", num_classes=7, image_size=48, width_multiplier=0.125)
        images = tf.random.stateless_normal([3, 48, 48, 3], seed=[0, 1])
        logits = model(images, training=False)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            out = sess.run(logits)
    assert out.shape == (3, 7) and np.isfinite(out).all()


def _signal_rms(conv_init: str) -> dict:
    """RMS of the first and last conv outputs for unit-variance input, VGG16 x0.25 at 224 px."""
    with tf.Graph().as_default():
        model = build_vgg("vgg16", 10, 224, 0.25, dropout=0.0, conv_init=conv_init, weight_seed=3)
        images = tf.random.stateless_normal([2, 224, 224, 3], seed=[0, 1])
        outputs = {}
        x = images
        for layer in model.layers[1:]:
            x = layer(x)
            if layer.name in ("block1_conv2", "block5_conv3"):
                outputs[layer.name] = tf.sqrt(tf.reduce_mean(tf.square(x)))
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            return sess.run(outputs)


def test_fan_in_init_keeps_the_forward_signal_that_fan_out_shrinks():
    """Why the demo uses --conv_init fan_in (issue 11): He on fan-out scales each conv's output
    power by c_in/c_out, 3/16 * (1/2)^3 ~ 1/43 through VGG16's widening blocks, and a small
    plain VGG that starts with a signal that small can sit at chance for epochs; fan-in keeps it."""
    fan_in, fan_out = _signal_rms("fan_in"), _signal_rms("fan_out")  # measured: 1.43, 0.22
    assert 0.3 < fan_in["block5_conv3"] < 3
    assert fan_out["block5_conv3"] < 0.35
    assert fan_in["block5_conv3"] > 3 * fan_out["block5_conv3"]


def test_conv_init_is_he_normal_on_the_chosen_fan():
    with tf.Graph().as_default():
        for conv_init, fan in (("fan_in", 9 * 16), ("fan_out", 9 * 32)):
            model = build_vgg("vgg16", 10, 32, 0.25, conv_init=conv_init, weight_seed=0)
            kernel = model.get_layer("block2_conv1").kernel  # 3x3, 16 -> 32 channels
            with v1.Session() as sess:
                sess.run(v1.global_variables_initializer())
                std = sess.run(kernel).std()
            assert std == pytest.approx(np.sqrt(2 / fan), rel=0.05)
        with pytest.raises(ValueError, match="conv_init"):
            build_vgg("vgg16", conv_init="glorot")


@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
def test_logits_equal_keras_applications_given_the_same_weights(arch):
    """Full width at 32 px (a 1x1x512 feature map into fc1): our network and
    keras.applications' compute the same function once they hold the same weights."""
    application = getattr(keras.applications, APPLICATIONS[arch])
    top = {}
    if "classifier_activation" in inspect.signature(application).parameters:
        top["classifier_activation"] = None  # logits (TF 1.15's applications end in softmax)
    with tf.Graph().as_default():
        ours = build_vgg(arch, num_classes=10, image_size=32, dropout=0.0, dense_init="he")
        reference = application(weights=None, input_shape=(32, 32, 3), classes=10, **top)
        assert [w.shape.as_list() for w in ours.weights] == [
            w.shape.as_list() for w in reference.weights
        ]
        copy = [v1.assign(theirs, mine) for theirs, mine in zip(reference.weights, ours.weights)]
        images = tf.random.stateless_normal([4, 32, 32, 3], seed=[2, 3])
        logits = ours(images, training=False)
        expected = reference(images, training=False)
        if not top:
            logits = tf.nn.softmax(logits)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            sess.run(copy)
            got, want = sess.run([logits, expected])
    assert np.std(want) > 1e-3  # not a constant output
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
