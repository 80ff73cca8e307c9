"""Export: every format reproduces the checkpoint's evaluation logits for the same JPEGs.

The reference is computed the way run_eval.py computes it (pipeline.eval_dataset feeding the
restored network); the exports are written by the real run_export.py command.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import REPO_ROOT

from vgg_keras import checkpoints, export, rundir
from vgg_keras import config as config_lib
from vgg_keras import model as model_lib
from vgg_keras.compat import keras, tf, v1
from vgg_keras.config import Config
from vgg_keras.data import info, pipeline, preprocess, schema
from vgg_keras.errors import UsageError

BATCH = 24
ALL_FORMATS = "savedmodel,keras,frozen_graph,checkpoint"


def _run_config(log_dir: str) -> Config:
    """The settings the run in ``log_dir`` saved in its config.json."""
    return config_lib.resolve(saved=rundir.read_config(log_dir), need_data=False)


@pytest.fixture(scope="module")
def reference(demo_checkpoint):
    """The first validation records: JPEG bytes, eval-pipeline images, and their eval logits."""
    config = _run_config(demo_checkpoint)
    split = pipeline.load_split(config.input, "validation")
    jpegs = [
        schema.parse(record)[0].numpy()
        for record in tf.data.TFRecordDataset(list(split.files)).take(BATCH)
    ]
    graph = tf.Graph()
    with graph.as_default():
        model = model_lib.build(config.network)
        dataset = pipeline.eval_dataset(split, config.network, config.input, BATCH)
        images, _ = v1.data.make_one_shot_iterator(dataset).get_next()
        logits = model(images, training=False)
        with v1.Session(graph=graph) as session:
            v1.train.Saver(model.weights).restore(
                session, rundir.latest_checkpoint(demo_checkpoint)
            )
            images, logits = session.run([images, logits])
    # A network that outputs one class everywhere would make every comparison below trivial.
    assert len(set(np.argmax(logits, 1))) > 2
    return jpegs, images, logits


@pytest.fixture(scope="module")
def exported(demo_checkpoint, tmp_path_factory, script_runner) -> str:
    out = str(tmp_path_factory.mktemp("export") / "vgg16")
    proc = script_runner(
        "run_export.py", "--ckpt", demo_checkpoint, "--format", ALL_FORMATS, "--output", out
    )
    assert proc.returncode == 0, proc.stderr
    assert f"to {out}:" in proc.stdout
    return out


def _close(actual, expected) -> None:
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


def test_savedmodel_serves_jpeg_bytes_with_eval_numbers(exported, reference):
    jpegs, _, logits = reference
    serve = tf.saved_model.load(exported).signatures[export.BYTES_SIGNATURE]
    out = {k: v.numpy() for k, v in serve(image_bytes=tf.constant(jpegs)).items()}
    _close(out["logits"], logits)
    np.testing.assert_array_equal(out["classes"], np.argmax(logits, 1))
    _close(out["probabilities"], tf.nn.softmax(logits).numpy())
    assert out["top_k_classes"].shape == out["top_k_probabilities"].shape == (BATCH, 5)
    np.testing.assert_array_equal(out["top_k_classes"][:, 0], out["classes"])
    ranked = np.take_along_axis(out["probabilities"], out["top_k_classes"], 1)
    np.testing.assert_array_equal(out["top_k_probabilities"], ranked)
    assert (np.diff(out["top_k_probabilities"], axis=1) <= 0).all()


def test_savedmodel_pixels_signature_normalises_like_eval(exported, reference):
    jpegs, _, logits = reference
    size = 32
    pixels = [
        preprocess.central_crop(
            preprocess.resize_shorter_side(
                tf.image.decode_jpeg(jpeg, channels=3),
                round(size * preprocess.EVAL_RESIZE_RATIO),
                "standard",
            ),
            size,
        )
        for jpeg in jpegs
    ]
    serve = tf.saved_model.load(exported).signatures[export.PIXELS_SIGNATURE]
    _close(serve(pixels=tf.stack(pixels))["logits"].numpy(), logits)


@pytest.mark.parametrize("name", export.KERAS_FILES)
def test_keras_files_reload_to_the_same_network(exported, reference, name):
    _, images, logits = reference
    model = keras.models.load_model(os.path.join(exported, name), compile=False)
    assert [layer.name for layer in model.layers if layer.weights][0] == "block1_conv1"
    _close(model(images, training=False).numpy(), logits)


def test_keras_3_loads_the_h5_file_as_docs_using_says(exported, reference):
    """On TF 2.16+ ``keras`` is Keras 3: it loads model.h5 (model.keras is tf_keras' format)."""
    keras3 = pytest.importorskip("keras")
    if not keras3.__version__.startswith("3."):
        pytest.skip(f"keras {keras3.__version__} is not Keras 3")
    _, images, logits = reference
    model = keras3.models.load_model(os.path.join(exported, "model.h5"), compile=False)
    _close(np.asarray(model(images, training=False)), logits)
    with open(os.path.join(REPO_ROOT, "docs", "using.md")) as f:
        assert "Keras 3 (`keras.models.load_model`) loads `model.h5`" in " ".join(f.read().split())


def test_frozen_graph_has_named_nodes_and_runs(exported, reference):
    _, images, logits = reference
    graph_def = tf.compat.v1.GraphDef()
    with open(os.path.join(exported, export.FROZEN_GRAPH_FILE), "rb") as f:
        graph_def.ParseFromString(f.read())
    ops = {node.name: node.op for node in graph_def.node}
    assert ops["input"] == "Placeholder"
    assert ops["logits"] == "Identity"
    assert not {"VarHandleOp", "VariableV2", "ReadVariableOp"} & set(ops.values())
    assert "image_bytes" not in ops  # only the network: the converter gets no string inputs
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
        with v1.Session(graph=graph) as session:
            _close(session.run("logits:0", {"input:0": images}), logits)


def test_checkpoint_format_and_sidecar_files(exported, demo_checkpoint):
    original = rundir.latest_checkpoint(demo_checkpoint)
    copy = rundir.latest_checkpoint(exported)
    assert os.path.basename(copy) == os.path.basename(original) == "model.ckpt-150"
    theirs, ours = tf.train.load_checkpoint(original), tf.train.load_checkpoint(copy)
    names = checkpoints.variable_shapes(copy)
    assert "predictions/kernel" in names
    for name in names:
        np.testing.assert_array_equal(ours.get_tensor(name), theirs.get_tensor(name))
    meta = json.load(open(os.path.join(exported, export.EXPORT_INFO_FILE)))
    assert meta["frozen_graph"] == {"input": "input", "output": "logits"}
    assert (meta["arch"], meta["class_num"], meta["image_size"]) == ("vgg16", 10, 32)
    assert meta["normalization"]["mean"] == pytest.approx(preprocess.MEAN_RGB)
    config = _run_config(demo_checkpoint)
    labels = info.read_labels(os.path.join(exported, info.LABELS_FILE))
    assert labels == info.read_labels(os.path.join(config.input.data_dir, info.LABELS_FILE))
    assert _run_config(exported).network == config.network


def test_refuses_a_full_output_folder_and_leaves_nothing_on_failure(demo_checkpoint, tmp_path):
    source = export.from_checkpoint(demo_checkpoint)
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    with pytest.raises(UsageError, match="exists and is not an empty folder"):
        export.export(source, ["savedmodel"], str(full))
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    out = tmp_path / "out"
    with pytest.raises(UsageError, match="3 labels, the model has 10 classes"):
        export.export(source, ["frozen_graph"], str(out), str(labels))
    assert sorted(os.listdir(tmp_path)) == ["full", "labels.txt"]
    # Missing parent folders are made.
    deep = tmp_path / "new" / "deeper" / "out"
    assert export.export(source, ["checkpoint"], str(deep)) == sorted(os.listdir(deep))
    assert rundir.latest_checkpoint(str(deep)) == str(deep / "model.ckpt-150")


def test_cli_missing_checkpoint_exit_2(script_runner, tmp_path):
    missing = tmp_path / "runs" / "model.ckpt-5"
    proc = script_runner("run_export.py", "--ckpt", missing, "--output", tmp_path / "out")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: checkpoint not found: {missing} (neither a folder nor {missing}.index)"
    )


def test_cli_class_count_mismatch_exit_2(script_runner, demo_checkpoint, tmp_path):
    proc = script_runner(
        "run_export.py", "--ckpt", demo_checkpoint, "--class_num", "5", "--output", tmp_path
    )
    assert proc.returncode == 2
    message = proc.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message
    assert "10 classes" in message and "5 classes" in message
