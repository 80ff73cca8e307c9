"""VGG16 and VGG19 as tf.keras functional-API models.

Layer names match ``keras.applications.VGG16/VGG19`` (``block1_conv1`` ... ``fc1``, ``fc2``,
``predictions``) so the published weight files load by name.  ``width_multiplier`` scales every
layer (convolutions and the two 4096-wide dense layers) to make the small networks that tests and
the demo use; 1.0 is the published network.
"""

from __future__ import annotations

from vgg_keras.compat import keras, tf
from vgg_keras.config import Config

BLOCKS = {
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}
BLOCK_FILTERS = (64, 128, 256, 512, 512)
FC_UNITS = 4096


def _scaled(units: int, width_multiplier: float) -> int:
    return max(1, int(round(units * width_multiplier)))


def build_vgg(
    arch: str = "vgg16",
    num_classes: int = 1000,
    image_size: int = 224,
    width_multiplier: float = 1.0,
    dropout: float = 0.5,
    dense_init: str = "normal",
    conv_init: str = "fan_out",
    weight_seed: int | None = None,
) -> keras.Model:
    """The VGG network of ``arch`` taking (N, image_size, image_size, 3) float images to logits.

    Convolutions are 3x3 SAME with bias and ReLU, initialised He-normal on fan-out
    (``conv_init="fan_out"``, the reference's and torchvision's choice: it keeps the gradients'
    power through every layer but scales each layer's output power by c_in/c_out, about 1/170
    through VGG16) or on fan-in (``"fan_in"``: the forward signal's power is kept; the small
    demo network needs that signal, while the full VGG16 at lr 0.01 diverged sooner with it on
    a repeated synthetic batch: see the README's Initialisation).  Dense kernels are
    N(0, 0.01) as published (``dense_init="normal"``) or He-normal on fan-in
    (``dense_init="he"``): a width-scaled network's narrow dense layers would shrink the signal
    to nothing with N(0, 0.01), so the small demo networks use He.  The logits
    are float32 even under a mixed-precision policy, so the softmax and the loss are computed in
    float32.
    """
    if arch not in BLOCKS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(BLOCKS)}")

    if dense_init not in ("normal", "he"):
        raise ValueError(f"unknown dense_init {dense_init!r}; expected 'normal' or 'he'")
    if conv_init not in ("fan_in", "fan_out"):
        raise ValueError(f"unknown conv_init {conv_init!r}; expected 'fan_in' or 'fan_out'")

    def seed(i: int) -> int | None:
        return None if weight_seed is None else weight_seed + i

    def dense_initializer(i: int):
        if dense_init == "he":
            # HeNormal, spelt as the VarianceScaling both Keras versions have (1.15 has no HeNormal)
            return keras.initializers.VarianceScaling(2.0, "fan_in", "truncated_normal", seed(i))
        return keras.initializers.RandomNormal(stddev=0.01, seed=seed(i))

    layer_index = 0
    inputs = keras.Input(shape=(image_size, image_size, 3), name="input")
    x = inputs
    for block, (repeats, filters) in enumerate(zip(BLOCKS[arch], BLOCK_FILTERS), start=1):
        for conv in range(1, repeats + 1):
            layer_index += 1
            x = keras.layers.Conv2D(
                _scaled(filters, width_multiplier),
                3,
                padding="same",
                activation="relu",
                kernel_initializer=keras.initializers.VarianceScaling(
                    2.0, mode=conv_init, distribution="untruncated_normal", seed=seed(layer_index)
                ),
                name=f"block{block}_conv{conv}",
            )(x)
        x = keras.layers.MaxPooling2D(2, strides=2, name=f"block{block}_pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for i in (1, 2):
        layer_index += 1
        x = keras.layers.Dense(
            _scaled(FC_UNITS, width_multiplier),
            activation="relu",
            kernel_initializer=dense_initializer(layer_index),
            name=f"fc{i}",
        )(x)
        if dropout > 0:
            x = keras.layers.Dropout(dropout, name=f"dropout{i}")(x)
    layer_index += 1
    logits = keras.layers.Dense(
        num_classes,
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.01, seed=seed(layer_index)),
        dtype=tf.float32,
        name="predictions",
    )(x)
    return keras.Model(inputs, logits, name=arch)


def from_config(config: Config, training: bool = False) -> keras.Model:
    """The network ``config`` describes.  For training also its dropout, and --seed reaching the
    initial weights (Keras initializers ignore the graph seed); otherwise no dropout layers, as
    evaluation, export and prediction want."""
    return build_vgg(
        config.arch,
        config.class_num,
        config.image_size,
        config.width_multiplier,
        dropout=config.dropout if training else 0.0,
        dense_init=config.dense_init,
        conv_init=config.conv_init,
        weight_seed=config.seed if training else None,
    )


def kernel_variables(model: keras.Model) -> list:
    """The weight matrices (conv and dense kernels), the variables weight decay applies to."""
    return [w for w in model.trainable_weights if "kernel" in w.name]
