"""The VGG family as tf.keras functional-API models, built from arch.py's table.

Layer names match ``keras.applications.VGG16/VGG19`` (``block1_conv1`` ... ``fc1``, ``fc2``,
``predictions``) so the published weight files load by name.  ``width_multiplier`` scales every
layer (convolutions and the two 4096-wide dense layers) to make the small networks that tests and
the demo use; 1.0 is the published network.
"""

from __future__ import annotations

from vgg_keras import arch, compat
from vgg_keras.arch import BLOCK_FILTERS, FC_UNITS
from vgg_keras.compat import keras, tf
from vgg_keras.config import Network

# torchvision's BatchNorm2d defaults (momentum 0.1 of the new batch, eps 1e-5).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def _scaled(units: int, width_multiplier: float) -> int:
    return max(1, int(round(units * width_multiplier)))


def build(network: Network, training: bool = False, seed: int | None = None) -> keras.Model:
    """The network ``network`` describes, taking (N, S, S, 3) float images to float32 logits.

    Convolutions are 3x3 SAME with bias, then batch norm for the ``_bn`` rows, then ReLU;
    kernels are the reference's truncated normal of variance 2/fan_out (``conv_init
    fan_out``; the reference's ``tf.initializers.variance_scaling(2.0, 'fan_out')``, also
    torchvision's scale) or of 2/fan_in (``fan_in``, Keras' HeNormal: the forward signal's power
    is kept, which a small plain network needs).  Dense kernels are N(0, 0.01) as published
    (``dense_init normal``) or He on fan-in (``he``: a width-scaled network's narrow dense
    layers would shrink the signal to nothing with N(0, 0.01)).  ``training`` adds the dropout
    layers (``StepDropout``) and freezes the layers before --trainable_from; ``seed`` reaches
    the initial weights (Keras initializers ignore the graph seed).
    The logits are float32 even under a mixed-precision policy, so the softmax and the loss are
    computed in float32.
    """
    row = arch.get(network.arch)

    def seed_of(i: int) -> int | None:
        return None if seed is None else seed + i

    def he(fan: str, i: int):
        scaling = keras.initializers.VarianceScaling(2.0, fan, "truncated_normal", seed_of(i))
        return compat.seeded_at_run_time(scaling)

    def normal(i: int):
        return compat.seeded_at_run_time(keras.initializers.RandomNormal(0.0, 0.01, seed_of(i)))

    layer_index = 0
    size = network.image_size
    x = inputs = keras.Input(shape=(size, size, 3), name="input")
    convs = iter(row.conv_layers())
    for block, (repeats, filters) in enumerate(zip(row.convs_per_block, BLOCK_FILTERS), start=1):
        for _ in range(repeats):
            layer_index += 1
            name = next(convs)
            x = keras.layers.Conv2D(
                _scaled(filters, network.width_multiplier),
                3,
                padding="same",
                activation=None if row.batch_norm else "relu",
                kernel_initializer=he(network.conv_init, layer_index),
                name=name,
            )(x)
            if row.batch_norm:
                x = keras.layers.BatchNormalization(
                    momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=row.bn_layer(name)
                )(x)
                x = keras.layers.Activation("relu", name=name + "_relu")(x)
        x = keras.layers.MaxPooling2D(2, strides=2, name=f"block{block}_pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for i in (1, 2):
        layer_index += 1
        init = he("fan_in", layer_index) if network.dense_init == "he" else normal(layer_index)
        x = keras.layers.Dense(
            _scaled(FC_UNITS, network.width_multiplier),
            activation="relu",
            kernel_initializer=init,
            name=f"fc{i}",
        )(x)
        if training and network.dropout > 0:
            x = StepDropout(network.dropout, name=f"dropout{i}")(x)
    layer_index += 1
    logits = keras.layers.Dense(
        network.class_num,
        kernel_initializer=normal(layer_index),
        dtype=tf.float32,
        name="predictions",
    )(x)
    model = keras.Model(inputs, logits, name=row.name)
    if training and network.trainable_from:
        for name in row.frozen_before(network.trainable_from):
            model.get_layer(name).trainable = False
    return model


class StepDropout(keras.layers.Layer):
    """Dropout whose masks are a function of the seed ``set_dropout_seed`` gives each call of
    the model, not of a random generator's state, which a restart would lose: a resumed run
    draws the masks of an uninterrupted one.  ``training`` is a Python bool."""

    def __init__(self, rate: float, **kwargs):
        super().__init__(**kwargs)
        self.rate, self.seed = rate, None

    def call(self, inputs, training=None):
        if not training:
            return inputs
        keep = tf.random.stateless_uniform(tf.shape(inputs), seed=self.seed) >= self.rate
        # Times 1 / (1 - rate), not divided by (1 - rate): Grappler turns a division by a
        # constant into a Reciprocal, which TF 1.15's CPU has no bf16 kernel for.
        scale = tf.cast(keep, inputs.dtype) * tf.cast(1 / (1 - self.rate), inputs.dtype)
        return inputs * scale


def set_dropout_seed(model: keras.Model, seed: int, step, stream) -> None:
    """Seed the dropout masks of ``model``'s next call from (``seed``, global ``step``,
    ``stream``: the replica and micro-batch); every (step, stream, layer) gets its own."""
    layers = [layer for layer in model.layers if isinstance(layer, StepDropout)]
    key = seed + (tf.cast(stream, tf.int64) + 1) * 2**32  # seed < 2**31: never seed itself
    for i, layer in enumerate(layers):
        layer.seed = tf.stack([key, tf.cast(step, tf.int64) * len(layers) + i])


def update_ops(model: keras.Model, inputs) -> list:
    """The batch-norm moving-statistics updates of ``model`` called on ``inputs`` in training
    mode (in a v1 graph, tf_keras leaves them out of the UPDATE_OPS collection)."""
    return list(model.get_updates_for(inputs)) + list(model.get_updates_for(None))


def decayed_variables(model: keras.Model, decay_biases: bool) -> list:
    """The variables weight decay applies to: every trainable one (the reference's), or the
    kernels only."""
    if decay_biases:
        return list(model.trainable_weights)
    return [w for w in model.trainable_weights if w.name.split("/")[-1].startswith("kernel")]
