"""The published keras.applications VGG16/VGG19 weight files, loaded into our model by layer name.

``vgg16_weights_tf_dim_ordering_tf_kernels.h5`` (and ``_notop``, and the VGG19 pair) are the
files ``keras.applications.VGG16(weights="imagenet")`` downloads.  We never download: the user
passes the file as ``--weights keras_imagenet:PATH``.  The weights came from Caffe and expect
``--preprocess caffe`` input; keras.applications lists them at about 71.3% top-1 on ImageNet
validation.  Our layer names are keras.applications' names, so loading is a lookup by name; inside
a layer the file keeps the weights in the layer's own order (kernel, bias), which is how Keras
itself reads them, since the stored weight names differ between Keras versions.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import h5py
import numpy as np

from vgg_keras import checkpoints
from vgg_keras.compat import keras
from vgg_keras.config import WEIGHTS_PREFIX
from vgg_keras.errors import UsageError
from vgg_keras.model import BLOCK_FILTERS

TOP_LAYERS = ("fc1", "fc2", "predictions")  # what a ``_notop`` file leaves out


def path_of(spec: str) -> str:
    """The file of a ``keras_imagenet:PATH`` spec (``--weights``)."""
    if not spec.startswith(WEIGHTS_PREFIX) or len(spec) == len(WEIGHTS_PREFIX):
        raise UsageError(f"--weights: expected {WEIGHTS_PREFIX}PATH, got {spec!r}")
    return spec[len(WEIGHTS_PREFIX) :]


def read_layers(path: str) -> dict[str, list[np.ndarray]]:
    """{layer name: its weight arrays in file order} for every layer that has weights.

    Reads files written by ``save_weights`` (layers at the root) and by ``model.save``
    (layers under ``model_weights``).
    """
    if not os.path.isfile(path):
        raise UsageError(f"--weights {path}: file not found")
    try:
        with h5py.File(path, "r") as f:
            group = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in group.attrs:
                raise UsageError(f"{path}: HDF5 file without Keras layer_names (not a weight file)")
            layers = {}
            for layer in group.attrs["layer_names"]:
                name = _text(layer)
                weight_names = [_text(w) for w in group[name].attrs.get("weight_names", [])]
                if weight_names:
                    layers[name] = [np.asarray(group[name][w]) for w in weight_names]
            return layers
    except OSError as err:
        raise UsageError(f"{path}: not an HDF5 Keras weight file ({err})") from err


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def infer_settings(path: str, layers: dict[str, list[np.ndarray]]) -> dict:
    """The network a weight file describes: arch, width_multiplier, and when it has the top
    layers also class_num and image_size (fc1's input is (image_size/32)^2 x the last filters).
    """
    if "block1_conv1" not in layers or "block5_conv1" not in layers:
        raise UsageError(f"{path}: no block1_conv1/block5_conv1 layers (not a VGG weight file)")
    settings = {
        "arch": "vgg19" if "block5_conv4" in layers else "vgg16",
        "width_multiplier": layers["block1_conv1"][0].shape[-1] / BLOCK_FILTERS[0],
    }
    if "predictions" in layers:
        settings["class_num"] = int(layers["predictions"][0].shape[-1])
    if "fc1" in layers:
        cells = layers["fc1"][0].shape[0] / layers["block5_conv1"][0].shape[-1]
        settings["image_size"] = int(round(math.sqrt(cells))) * 32
    return settings


def load(session, model: keras.Model, path: str, exclude: Sequence[str] = ()) -> list[str]:
    """Set ``model``'s layers (graph mode, in ``session``) from the weight file at ``path``.

    Every layer with weights must be in the file with the same shapes, except the layers named
    in ``exclude`` (``--restore_exclude``: a new classifier, or the top of a ``_notop`` file); a
    file layer the model lacks (a VGG19 file for a VGG16 model) is an error too.  Adds no ops,
    so it works on the finalized training graph.  Returns the names of the layers loaded.
    """
    layers = read_layers(path)
    ours = {layer.name: layer for layer in model.layers if layer.weights}
    extra = [name for name in layers if name not in ours]
    if extra:
        raise UsageError(
            f"{path}: has layer {extra[0]} that the {model.name} model lacks (check --arch)"
        )
    for scope in exclude:
        if not any(checkpoints.excluded(name, [scope]) for name in ours):
            # A misspelt scope would otherwise load the layer it meant to leave out.
            raise UsageError(f"--restore_exclude {scope}: the model has no such layer")
    variables, values, loaded = [], [], []
    for name, layer in ours.items():
        if checkpoints.excluded(name, list(exclude)):
            continue
        if name not in layers:
            hint = " (a _notop file? add fc1,fc2,predictions to --restore_exclude)"
            raise UsageError(f"{path}: has no layer {name}{hint if name in TOP_LAYERS else ''}")
        stored = layers[name]
        wanted = [w.shape.as_list() for w in layer.weights]
        if [list(a.shape) for a in stored] != wanted:
            raise UsageError(f"{path}: {_mismatch(name, stored, wanted)}")
        variables.extend(layer.weights)
        values.extend(stored)
        loaded.append(name)
    checkpoints.assign(session, variables, values)
    return loaded


def _mismatch(name: str, stored: list[np.ndarray], wanted: list[list[int]]) -> str:
    if name == "predictions" and stored[0].shape[-1] != wanted[0][-1]:
        return (
            f"predictions is for {stored[0].shape[-1]} classes, the model has {wanted[0][-1]} "
            "(set --class_num, or add predictions to --restore_exclude to train a new classifier)"
        )
    shapes = [list(a.shape) for a in stored]
    return (
        f"layer {name} has shapes {shapes}, the model needs {wanted} "
        "(check --width_multiplier and --image_size)"
    )
