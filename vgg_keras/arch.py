"""The VGG family in one table: every reader of an architecture (the settings, the model, the
checkpoint reader, the published-weights loader) looks it up here.  No TensorFlow.

The rows are torchvision's ``cfgs`` A, B, D and E (VGG11, 13, 16, 19): convolutions per block,
with and without batch normalisation after every convolution.  Layer names are
keras.applications' (``block1_conv1`` ... ``fc1``, ``fc2``, ``predictions``), so the published
VGG16/VGG19 weight files load by name; a batch-normalised convolution ``blockB_convC`` is followed
by ``blockB_bnC``.

The reference implementation built its network with ``tf.compat.v1.layers``, whose variables are
named by creation order (``conv2d``, ``conv2d_1``, ... then ``dense``, ``dense_1``, ``dense_2``):
``reference_names`` maps them onto ours.
"""

from __future__ import annotations

import dataclasses

BLOCK_FILTERS = (64, 128, 256, 512, 512)
FC_UNITS = 4096
TOP_LAYERS = ("fc1", "fc2", "predictions")
BN_SUFFIX = "_bn"


@dataclasses.dataclass(frozen=True)
class Arch:
    """One row: its name, convolutions per block, batch norm, and published Keras weights."""

    name: str
    convs_per_block: tuple[int, ...]
    batch_norm: bool = False
    keras_weights: bool = False  # keras.applications publishes ImageNet weights for it

    def conv_layers(self) -> list[str]:
        """The convolutions' layer names in network order."""
        return [
            f"block{block}_conv{conv}"
            for block, repeats in enumerate(self.convs_per_block, start=1)
            for conv in range(1, repeats + 1)
        ]

    def bn_layer(self, conv_layer: str) -> str:
        """The batch-norm layer after ``blockB_convC``: ``blockB_bnC``."""
        return conv_layer.replace("_conv", "_bn")

    def weight_layers(self) -> list[str]:
        """Every layer with weights, in network order (batch norm after its convolution)."""
        layers = self.conv_layers()
        if self.batch_norm:
            layers = [name for conv in layers for name in (conv, self.bn_layer(conv))]
        return layers + list(TOP_LAYERS)

    def frozen_before(self, first: str) -> list[str] | None:
        """The weight layers before ``first`` (a layer, or a block: ``block4``), which
        --trainable_from keeps as they are; None when ``first`` names nothing here."""
        layers = self.weight_layers()
        for index, name in enumerate(layers):
            if name == first or name.startswith(first + "_"):
                return layers[:index]
        return None

    def reference_names(self) -> dict[str, str]:
        """{our layer: the reference's tf.compat.v1.layers scope} (plain networks only)."""
        if self.batch_norm:
            return {}
        convs = self.conv_layers()
        names = ["conv2d"] + [f"conv2d_{i}" for i in range(1, len(convs))]
        dense = ["dense", "dense_1", "dense_2"]
        return dict(zip(convs + list(TOP_LAYERS), names + dense))


def _family() -> dict[str, Arch]:
    rows = {"vgg11": (1, 1, 2, 2, 2), "vgg13": (2, 2, 2, 2, 2), "vgg16": (2, 2, 3, 3, 3)}
    rows["vgg19"] = (2, 2, 4, 4, 4)
    table = {}
    for name, convs in rows.items():
        table[name] = Arch(name, convs, keras_weights=name in ("vgg16", "vgg19"))
        table[name + BN_SUFFIX] = Arch(name + BN_SUFFIX, convs, batch_norm=True)
    return table


ARCHS = _family()
NAMES = tuple(ARCHS)


def get(name: str) -> Arch:
    """The row of ``name`` (a KeyError names the choices: config.py validates names first)."""
    if name not in ARCHS:
        raise KeyError(f"unknown arch {name!r}; expected one of {', '.join(NAMES)}")
    return ARCHS[name]


def from_layers(kernel_layers, batch_norm: bool) -> Arch | None:
    """The architecture whose layers with a kernel are exactly ``kernel_layers`` (our names),
    with or without batch norm; None when no row has them."""
    found = set(kernel_layers)
    rows = [r for r in ARCHS.values() if r.batch_norm == batch_norm]
    return next((r for r in rows if set(r.conv_layers() + list(TOP_LAYERS)) == found), None)


def from_reference_scopes(scopes) -> Arch | None:
    """The plain architecture whose reference scopes (``conv2d`` ...) are exactly ``scopes``."""
    rows = [r for r in ARCHS.values() if r.reference_names()]
    return next((r for r in rows if set(r.reference_names().values()) == set(scopes)), None)
