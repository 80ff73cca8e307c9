"""Exporting a trained network for serving, for Keras, and for the Ascend offline converter.

``python run_export.py --ckpt runs/demo --format savedmodel,keras,frozen_graph --output DIR``
writes into DIR (atomically: everything appears at once, or nothing):

- a SavedModel (``saved_model.pb`` + ``variables/``): signature ``serving_default`` takes a batch
  of encoded JPEG strings ``image_bytes`` and applies exactly the evaluation preprocessing
  (``preprocess.eval_image``), so its numbers are ``run_eval.py``'s; ``serving_pixels`` takes
  float32 RGB ``pixels`` in 0..255, already resized and cropped to image_size.  Both return
  ``classes``, ``probabilities``, ``top_k_classes``, ``top_k_probabilities`` and ``logits``;
- ``model.h5`` and ``model.keras``: the Keras network, normalised images -> logits (tf_keras
  loads both, Keras 3 only model.h5);
- ``frozen_graph.pb``: the same network as a GraphDef with constants, input node ``input``
  (normalised float images, NHWC) and output node ``logits``;
- ``checkpoint``: ``model.ckpt-<step>`` + ``config.json``, what run_eval.py and fine-tuning read
  (turns a published Keras weight file into one of our checkpoints);
- ``export_info.json`` (the network, the node names and the normalisation the frozen graph and
  the Keras files expect) and ``labels.txt`` when the dataset had one.

The network's settings come from the ``config.json`` the training run wrote beside the checkpoint
(or, for ``--weights keras_imagenet:PATH``, from the weight file itself); flags override them.
Exports always compute in float32, whatever precision the network was trained in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import warnings

from vgg_keras import atomic, checkpoints, cli, compat, distribute, keras_weights, rundir, storage
from vgg_keras import config as config_lib
from vgg_keras import model as model_lib
from vgg_keras.compat import keras, tf, v1
from vgg_keras.config import Config
from vgg_keras.data import info, preprocess
from vgg_keras.errors import UsageError, reason

INPUT_NODE = "input"  # build_vgg's keras.Input: in graph mode, a placeholder of that name
OUTPUT_NODE = "logits"
FROZEN_GRAPH_FILE = "frozen_graph.pb"
KERAS_FILES = ("model.h5", "model.keras")
EXPORT_INFO_FILE = "export_info.json"
BYTES_SIGNATURE = "serving_default"
PIXELS_SIGNATURE = "serving_pixels"
TOP_K = 5
PRECISION = "fp32"  # exports compute in float32, whatever precision the network trained in


@dataclasses.dataclass
class ModelSource:
    """A network's settings and where its weights come from: a checkpoint or a Keras file."""

    config: Config
    checkpoint: str | None = None
    weights_file: str | None = None

    @property
    def step(self) -> int:
        return rundir.checkpoint_step(self.checkpoint) if self.checkpoint else 0

    def restore(self, session, model: keras.Model) -> None:
        """Load the weights into ``model`` (a checkpoint of either layout, or a weight file)."""
        if self.checkpoint:
            checkpoints.restore(session, self.checkpoint, model)
        else:
            keras_weights.load(session, model, self.weights_file)

    def labels_file(self) -> str | None:
        """The dataset's labels.txt, when the config names a data folder that has one."""
        data_dir = self.config.input.data_dir
        if data_dir and storage.isfile(os.path.join(data_dir, info.LABELS_FILE)):
            return os.path.join(data_dir, info.LABELS_FILE)
        return None


def class_names(labels: str | None, class_num: int) -> list[str]:
    """The names in a labels.txt, checked against the class count; class ids without one."""
    if labels is None:
        return [str(k) for k in range(class_num)]
    names = info.read_labels(labels)
    if len(names) != class_num:
        raise UsageError(f"{labels}: {len(names)} labels, the model has {class_num} classes")
    return names


def from_checkpoint(path: str, settings: dict | None = None) -> ModelSource:
    """A checkpoint prefix (or folder: its newest) with the settings of the run that wrote it
    (a reference checkpoint without config.json: the network read from its variables)."""
    (checkpoint,) = rundir.resolve_checkpoint(path)
    folder = os.path.dirname(checkpoint)
    saved = rundir.read_config(folder) or checkpoints.read_contents(checkpoint).settings()
    config = config_lib.resolve(
        settings=settings,
        saved=saved,
        need_data=False,
        saved_source=os.path.join(folder, rundir.CONFIG_FILE),
    )
    return ModelSource(config, checkpoint=checkpoint)


def from_keras_weights(spec: str, settings: dict | None = None) -> ModelSource:
    """A published weight file with the network it describes, caffe preprocessing."""
    path = keras_weights.locate(spec, (settings or {}).get("arch") or "vgg16", print)
    layers = keras_weights.read_layers(path)
    saved = {"preprocess": "caffe", **keras_weights.infer_settings(path, layers)}
    config = config_lib.resolve(settings=settings, saved=saved, need_data=False, saved_source=path)
    return ModelSource(config, weights_file=path)


@dataclasses.dataclass
class InferenceGraph:
    """The network with its weights loaded, fed by JPEG bytes or by pixels, in one session."""

    config: Config
    graph: tf.Graph
    session: v1.Session
    model: keras.Model
    image_bytes: tf.Tensor  # string [N]: encoded images
    pixels: tf.Tensor  # float32 [N, S, S, 3]: RGB 0..255, resized and cropped
    outputs: dict  # {"image_bytes": heads, "pixels": heads}, heads = {name: tensor}

    def close(self) -> None:
        self.session.close()


def _heads(logits, k: int) -> dict:
    """What a client wants from logits; top-k ranks logits, as the evaluator's top-1/top-5 do."""
    probabilities = tf.nn.softmax(logits)
    _, top_classes = tf.nn.top_k(logits, k)
    return {
        "classes": top_classes[:, 0],
        "probabilities": probabilities,
        "top_k_classes": top_classes,
        "top_k_probabilities": tf.gather(probabilities, top_classes, batch_dims=1),
        "logits": logits,
    }


def build_inference(source: ModelSource) -> InferenceGraph:
    """The inference graph of ``source`` in a new session with the weights restored (batch
    norm, where the network has it, in inference mode: the moving statistics)."""
    config = source.config
    network, size = config.network, config.network.image_size
    graph = tf.Graph()
    with graph.as_default():
        with compat.precision_policy(PRECISION):
            model = model_lib.build(network)
        # The frozen graph's named output, from its input placeholder ``input``.
        tf.identity(model(model.input, training=False), name=OUTPUT_NODE)
        image_bytes = v1.placeholder(tf.string, [None], name="image_bytes")
        decoded = tf.map_fn(
            lambda jpeg: preprocess.eval_image(jpeg, network, config.input),
            image_bytes,
            dtype=tf.float32,  # (fn_output_signature is TF >= 2.3's name; both stacks take dtype)
        )
        pixels = v1.placeholder(tf.float32, [None, size, size, 3], name="pixels")
        k = min(TOP_K, network.class_num)
        normalized = preprocess.normalize(pixels, network.preprocess)
        outputs = {
            "image_bytes": _heads(model(decoded, training=False), k),
            "pixels": _heads(model(normalized, training=False), k),
        }
    session = distribute.single_device().session(graph, config.runtime)
    source.restore(session, model)
    return InferenceGraph(config, graph, session, model, image_bytes, pixels, outputs)


# ---------------------------------------------------------------------------------------------
# Writers, one per format; each writes into ``out``.


def _write_savedmodel(inference: InferenceGraph, out: str) -> None:
    def signature(name: str, tensor) -> v1.SignatureDef:
        return v1.saved_model.signature_def_utils.predict_signature_def(
            {name: tensor}, inference.outputs[name]
        )

    builder = v1.saved_model.Builder(out)
    with inference.graph.as_default():  # the builder adds its Saver to the graph
        builder.add_meta_graph_and_variables(
            inference.session,
            [v1.saved_model.tag_constants.SERVING],
            signature_def_map={
                BYTES_SIGNATURE: signature("image_bytes", inference.image_bytes),
                PIXELS_SIGNATURE: signature("pixels", inference.pixels),
            },
            strip_default_attrs=True,
        )
    builder.save()


def _write_keras(inference: InferenceGraph, out: str) -> None:
    # Keras writes its files only from eager variables: copy the values into an eager twin.
    values = inference.session.run(inference.model.weights)
    model = model_lib.build(inference.config.network)
    model.set_weights(values)
    for name in KERAS_FILES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "HDF5 is legacy": the user asked for it
            model.save(os.path.join(out, name))


def _write_frozen_graph(inference: InferenceGraph, out: str) -> None:
    graph_def = v1.graph_util.convert_variables_to_constants(
        inference.session, inference.graph.as_graph_def(), [OUTPUT_NODE]
    )
    tf.io.write_graph(graph_def, out, FROZEN_GRAPH_FILE, as_text=False)


def _write_checkpoint(inference: InferenceGraph, out: str, step: int) -> None:
    with inference.graph.as_default():
        saver = v1.train.Saver(
            inference.model.weights, save_relative_paths=True, pad_step_number=False
        )
        prefix = os.path.join(out, rundir.CHECKPOINT_PREFIX)
        saver.save(inference.session, prefix, step, write_meta_graph=False)
    rundir.write_config(out, inference.config.replace(weights=None, restore_path=None).flat())


def _normalization_info(normalization: str) -> dict:
    if normalization == "caffe":
        return {"channels": "BGR", "mean": list(preprocess.CAFFE_MEAN_BGR), "std": [1, 1, 1]}
    mean, std = preprocess.MEAN_RGB, preprocess.STDDEV_RGB
    return {"channels": "RGB", "mean": list(mean), "std": list(std)}


def export(
    source: ModelSource, formats: list[str], output: str, labels: str | None = None
) -> list[str]:
    """Write ``formats`` of ``source`` into the folder ``output``; returns the names written.

    ``output`` must be new or empty.  Everything is written to a fresh hidden folder beside it
    first (atomic.replacing) and renamed at the end, so a server watching ``output`` never sees
    half an export; on a store (``gs://``), in place, export_info.json last.
    """
    if (storage.isdir(output) and storage.listdir(output)) or storage.isfile(output):
        raise UsageError(f"--output {output}: exists and is not an empty folder")
    labels = labels or source.labels_file()
    inference = build_inference(source)
    # os.replace renames a folder over an empty one (POSIX rename), so an empty output is fine.
    try:
        storage.makedirs(storage.split(storage.abspath(output))[0])
        with contextlib.closing(inference), atomic.replacing(output, folder=True) as tmp:
            class_names(labels, source.config.network.class_num)  # after loading: errors first
            _write(inference, source, formats, labels, tmp)
    except (OSError, tf.errors.OpError) as err:
        raise UsageError(f"--output {output}: cannot write there ({reason(err)})") from err
    return sorted(storage.listdir(output))


def _write(
    inference: InferenceGraph, source: ModelSource, formats, labels: str | None, out: str
) -> None:
    if "savedmodel" in formats:  # first: the builder wants a folder that does not exist
        _write_savedmodel(inference, out)
    storage.makedirs(out)
    if "keras" in formats:
        _write_keras(inference, out)
    if "frozen_graph" in formats:
        _write_frozen_graph(inference, out)
    if "checkpoint" in formats:
        _write_checkpoint(inference, out, source.step)
    if labels:
        storage.copyfile(labels, os.path.join(out, info.LABELS_FILE))
    c = source.config
    export_info = {
        "source": source.checkpoint or f"{config_lib.KERAS_WEIGHTS}{source.weights_file}",
        "step": source.step,
        "formats": list(formats),
        **{name: c.value(name) for name in config_lib.IDENTITY},
        # What a client of the frozen graph or the Keras files must do to an image first.
        "normalization": _normalization_info(c.network.preprocess),
        "eval_resize": c.input.resize,
        "eval_resize_side": int(round(c.network.image_size * preprocess.EVAL_RESIZE_RATIO)),
    }
    if "savedmodel" in formats:
        export_info["signatures"] = [BYTES_SIGNATURE, PIXELS_SIGNATURE]
    if "frozen_graph" in formats:
        export_info["frozen_graph"] = {"input": INPUT_NODE, "output": OUTPUT_NODE}
    with storage.open(os.path.join(out, EXPORT_INFO_FILE), "w") as f:
        json.dump(export_info, f, indent=2)


# ---------------------------------------------------------------------------------------------
# Command line


def source_from_args(args: cli.ProgramArgs) -> ModelSource:
    """The model named by --ckpt or --weights, with the settings given as overrides."""
    path = args.extra.get("ckpt")
    if path:
        best = getattr(args.options, "best", False)
        return from_checkpoint(rundir.best_checkpoint(path) if best else path, args.settings)
    return from_keras_weights(args.extra["weights"], args.settings)


def run(args: cli.ProgramArgs) -> int:
    """run_export.py with cli.export_args' flags."""
    source = source_from_args(args)
    options = args.options
    written = export(source, list(options.format), options.output, options.labels)
    print(
        f"exported {source.checkpoint or source.weights_file} to {options.output}: {', '.join(written)}"
    )
    return 0
