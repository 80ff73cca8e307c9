"""The published keras.applications VGG16/VGG19 weight files, loaded into our model by layer name.

``vgg16_weights_tf_dim_ordering_tf_kernels.h5`` (and ``_notop``, and the VGG19 pair) are the
files ``keras.applications.VGG16(weights="imagenet")`` uses.  ``--weights imagenet`` takes the
one it needs from Keras' cache (``~/.keras/models``, or ``$KERAS_HOME/models``) and otherwise
downloads it from keras.applications' address, with its checksum, saying where from and how big
it is first; ``--weights keras_imagenet:PATH`` names a file.  The weights came from Caffe and
expect ``--preprocess caffe`` input; keras.applications lists them at about 71.3% (VGG16) and
71.3% (VGG19) top-1 on ImageNet validation.  Our layer names are keras.applications' names, so
loading is a lookup by name; inside a layer the file keeps the weights in the layer's own order
(kernel, bias), which is how Keras itself reads them.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Sequence

import h5py
import numpy as np

from vgg_keras import arch, checkpoints, storage
from vgg_keras.arch import BLOCK_FILTERS, TOP_LAYERS
from vgg_keras.compat import keras
from vgg_keras.config import IMAGENET_WEIGHTS, KERAS_WEIGHTS
from vgg_keras.errors import UsageError

BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications"
# (bytes, md5) of keras.applications' files (``published_name``), per network and with/without
# the top.
PUBLISHED = {
    ("vgg16", True): (553_467_096, "64373286793e3c8b2b4e3219cbf3544b"),
    ("vgg16", False): (58_889_256, "6d6bbae143d832006294945121d1f1fc"),
    ("vgg19", True): (574_710_816, "cbe5617147190e668d6c5d5026f83318"),
    ("vgg19", False): (80_134_624, "253f8cb515780f3b799900260a226db6"),
}


def published_name(arch_name: str, top: bool) -> str:
    """``vgg16_weights_tf_dim_ordering_tf_kernels.h5``, or ``..._notop.h5`` without the top."""
    return f"{arch_name}_weights_tf_dim_ordering_tf_kernels{'' if top else '_notop'}.h5"


def cache_dir() -> str:
    """Keras' cache of downloaded models."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models")


def locate(spec: str, arch_name: str, say: Callable[[str], None], top: bool = True) -> str:
    """The weight file of a --weights spec: ``keras_imagenet:PATH``'s PATH, or for
    ``imagenet`` keras.applications' file for ``arch_name`` (with the top layers, or without:
    ``top=False``), from Keras' cache or downloaded."""
    if spec.startswith(KERAS_WEIGHTS) and spec != KERAS_WEIGHTS:
        return spec[len(KERAS_WEIGHTS) :]
    if spec != IMAGENET_WEIGHTS:
        raise UsageError(
            f"--weights: expected {IMAGENET_WEIGHTS} or {KERAS_WEIGHTS}PATH, got {spec!r}"
        )
    if not arch.get(arch_name).keras_weights:
        raise UsageError(f"--weights {spec}: published weights exist for vgg16 and vgg19 only")
    name, (size, md5) = published_name(arch_name, top), PUBLISHED[(arch_name, top)]
    cached = os.path.join(cache_dir(), name)
    if os.path.isfile(cached):
        say(f"--weights imagenet: {cached} (from Keras' cache)")
        return cached
    url = f"{BASE_URL}/{arch_name}/{name}"
    say(f"--weights imagenet: downloading {url} ({size / 2**20:.0f} MiB) into {cache_dir()}")
    try:
        return keras.utils.get_file(
            name, url, cache_subdir="models", file_hash=md5, cache_dir=os.path.dirname(cache_dir())
        )
    except Exception as err:  # get_file raises several types for network and hash failures
        raise UsageError(
            f"--weights imagenet: cannot download {url} ({err}); put the file in {cache_dir()}"
        ) from err


def wants_top(exclude: Sequence[str]) -> bool:
    """Whether a fine-tuning that leaves ``exclude`` out needs the file with the top layers."""
    return not any(checkpoints.excluded(layer, list(exclude)) for layer in ("fc1", "fc2"))


def read_layers(path: str) -> dict[str, list[np.ndarray]]:
    """{layer name: its weight arrays in file order} for every layer that has weights.

    Reads files written by ``save_weights`` (layers at the root) and by ``model.save``
    (layers under ``model_weights``).
    """
    if not storage.isfile(path):
        raise UsageError(f"--weights {path}: file not found")
    try:
        with h5py.File(_local(path), "r") as f:
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


def _local(path: str):
    """What h5py can open: a local path, or a store's file read into memory."""
    if not storage.is_url(path):
        return path
    with storage.open(path, "rb") as f:
        return io.BytesIO(f.read())


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def infer_settings(path: str, layers: dict[str, list[np.ndarray]]) -> dict:
    """The network a weight file describes: arch, width_multiplier, and when it has the top
    layers also class_num and image_size (fc1's input is (image_size/32)^2 x the last filters).
    """
    if "block1_conv1" not in layers or "block5_conv1" not in layers:
        raise UsageError(f"{path}: no block1_conv1/block5_conv1 layers (not a VGG weight file)")
    kernels = [name for name in layers if name.split("_")[-1].startswith("conv")]
    row = arch.from_layers(kernels + list(TOP_LAYERS), batch_norm=False)
    settings = {
        "arch": row.name if row else "vgg16",
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
