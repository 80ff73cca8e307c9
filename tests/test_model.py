"""The VGG family: torchvision's parameter counts for every row of the table, keras.applications'
layer names, the reference's truncated initialisation, batch norm, width scaling, float32 logits."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from vgg_keras import arch as arch_lib
from vgg_keras import model as model_lib
from vgg_keras.api import build_vgg
from vgg_keras.compat import keras, set_precision_policy, tf, v1
from vgg_keras.errors import UsageError

# torchvision's parameter counts at 1000 classes (Keras also counts batch norm's moving
# statistics, torchvision's buffers: compared here are the trainable ones).  The full networks
# are only graph construction (no weights are allocated), about 0.2 s each.
TORCHVISION = {
    "vgg11": 132_863_336,
    "vgg11_bn": 132_868_840,
    "vgg13": 133_047_848,
    "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
    "vgg19": 143_667_240,
    "vgg19_bn": 143_678_248,
}
APPLICATIONS = {"vgg16": "VGG16", "vgg19": "VGG19"}


def test_the_table_is_torchvisions_family():
    assert set(arch_lib.NAMES) == set(TORCHVISION)


@pytest.mark.parametrize("arch", sorted(TORCHVISION))
def test_trainable_parameters_equal_torchvisions(arch):
    with tf.Graph().as_default():
        model = build_vgg(arch, num_classes=1000, image_size=224)
        trainable = sum(w.shape.num_elements() for w in model.trainable_weights)
        assert trainable == TORCHVISION[arch]
        assert model.output.shape.as_list() == [None, 1000]
        moving = [w for w in model.non_trainable_weights if "moving" in w.name]
        assert len(moving) == (2 * len(arch_lib.get(arch).conv_layers()) if "_bn" in arch else 0)


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
        # Without dropout (as evaluation builds it) the layer lists are the same apart from the
        # input layer's name.
        assert [la.name for la in ours.layers[1:]] == [la.name for la in reference.layers[1:]]


def _network(**settings):
    from vgg_keras.config import resolve

    return resolve(settings=settings, need_data=False).network


def test_dropout_layers_follow_fc1_and_fc2_when_training():
    with tf.Graph().as_default():
        network = _network(class_num=10, image_size=32, width_multiplier=0.125)
        names = [layer.name for layer in model_lib.build(network, training=True).layers]
    assert names[-5:] == ["fc1", "dropout1", "fc2", "dropout2", "predictions"]


def test_batch_norm_follows_every_convolution():
    with tf.Graph().as_default():
        network = _network(arch="vgg11_bn", class_num=10, image_size=32, width_multiplier=0.125)
        names = [layer.name for layer in model_lib.build(network).layers]
    assert names[1:5] == ["block1_conv1", "block1_bn1", "block1_conv1_relu", "block1_pool"]
    assert names.count("block4_bn2") == 1 and "block4_bn3" not in names


def test_width_multiplier_scales_every_layer_but_the_logits():
    with tf.Graph().as_default():
        small = build_vgg("vgg16", num_classes=10, image_size=32, width_multiplier=0.125)
        full = build_vgg("vgg16", num_classes=10, image_size=32)
        widths = {layer.name: layer.weights[0].shape[-1] for layer in small.layers if layer.weights}
        assert widths["block1_conv1"] == 8 and widths["block5_conv3"] == 64
        assert widths["fc1"] == widths["fc2"] == 512 and widths["predictions"] == 10
        assert small.count_params() < full.count_params() / 50


def test_decayed_variables_are_every_trainable_one_or_the_kernels():
    with tf.Graph().as_default():
        for arch, layers in (("vgg16", 16), ("vgg19", 19), ("vgg11_bn", 11)):
            model = build_vgg(arch, 10, 32, 0.125)
            kernels = model_lib.decayed_variables(model, decay_biases=False)
            assert len(kernels) == layers
            assert all(len(k.shape) in (2, 4) for k in kernels)
            everything = model_lib.decayed_variables(model, decay_biases=True)
            assert everything == list(model.trainable_weights)


def test_unknown_arch():
    with pytest.raises(UsageError, match="vgg13_bn"):
        build_vgg("vgg12")


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


@pytest.mark.parametrize("rate", [0.5, 0.3])
def test_dropout_runs_in_bfloat16_and_scales_what_it_keeps(rate):
    """Under mixed_bfloat16 the masks apply to bf16 activations (TF 1.15's CPU has no bf16
    Reciprocal, which Grappler makes of a division by a constant): kept values are x / (1 -
    rate), the rest 0."""
    set_precision_policy("bf16")
    try:
        with tf.Graph().as_default():
            layer = model_lib.StepDropout(rate)
            layer.seed = tf.constant([1, 2], tf.int64)
            fed = v1.placeholder(tf.float32, [64, 256])
            y = tf.cast(layer(tf.cast(fed, tf.bfloat16), training=True), tf.float32)
            with v1.Session() as sess:
                y = sess.run(y, {fed: np.ones([64, 256], np.float32)})
    finally:
        set_precision_policy("fp32")
    kept = y[y != 0]
    np.testing.assert_allclose(kept, 1 / (1 - rate), rtol=1e-2)  # bf16 has 8 bits of mantissa
    assert abs(kept.size / y.size - (1 - rate)) < 0.05


def _initial_weights(seed):
    with tf.Graph().as_default():
        network = _network(class_num=10, image_size=32, width_multiplier=0.125)
        model = model_lib.build(network, seed=seed)
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
        network = _network(class_num=10, width_multiplier=0.25, conv_init=conv_init)
        model = model_lib.build(network, seed=3)
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
    """Why the demo uses --conv_init fan_in: He on fan-out scales each conv's output power by
    c_in/c_out, 3/16 * (1/2)^3 ~ 1/43 through VGG16's widening blocks, and a small plain VGG
    that starts with a signal that small can sit at chance for epochs; fan-in keeps it."""
    fan_in, fan_out = _signal_rms("fan_in"), _signal_rms("fan_out")  # measured: 3.12, 0.48
    assert 0.3 < fan_in["block5_conv3"] < 10
    assert fan_in["block5_conv3"] > 3 * fan_out["block5_conv3"]


def test_conv_init_is_the_references_truncated_normal_on_the_chosen_fan():
    """tf.initializers.variance_scaling(2.0, mode) on TF 1.15, the reference's: a normal
    truncated at two of its standard deviations, rescaled (/0.8796) to variance 2/fan."""
    with tf.Graph().as_default():
        for conv_init, fan in (("fan_in", 9 * 64), ("fan_out", 9 * 128)):
            network = _network(class_num=10, image_size=32, conv_init=conv_init)
            kernel = model_lib.build(network, seed=0).get_layer("block2_conv1").kernel
            with v1.Session() as sess:
                sess.run(v1.global_variables_initializer())
                values = sess.run(kernel) / np.sqrt(2 / fan)  # 3x3, 64 -> 128 channels
            assert values.std() == pytest.approx(1.0, rel=0.02)
            assert np.abs(values).max() <= 2 / 0.87962566103423978 + 1e-6  # 2.2737
            assert np.abs(values).max() > 2.2  # truncated, not narrower
        with pytest.raises(UsageError, match="conv_init"):
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
        ours = build_vgg(arch, num_classes=10, image_size=32, dense_init="he")
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
