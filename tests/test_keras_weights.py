"""Published keras.applications weight files load into build_vgg by layer name.

The files are written here by keras.applications itself (``weights=None`` + ``save_weights``),
the same layout as the published downloads; nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from conftest import stack_neutral

from vgg_keras import cli, commands, export, keras_weights, rundir
from vgg_keras import config as config_lib
from vgg_keras.api import build_vgg
from vgg_keras.compat import keras, tf, v1
from vgg_keras.data import pipeline, preprocess
from vgg_keras.errors import UsageError

TOP = ["fc1", "fc2", "predictions"]


def _keras_file(path, application, **kwargs) -> tuple[str, keras.Model]:
    """A keras.applications network with random weights, saved to ``path``: (path, network)."""
    network = application(weights=None, **kwargs)
    network.save_weights(str(path))
    return str(path), network


@pytest.fixture(scope="module")
def vgg16_keras(tmp_path_factory) -> tuple[str, keras.Model]:
    """A keras.applications VGG16 with its top, 64 px input, 10 classes (42M parameters).

    64 px leaves block5 a 2x2 map, so fc1's rows depend on the order Flatten lays it out in.
    """
    folder = tmp_path_factory.mktemp("keras")
    return _keras_file(
        folder / "vgg16_10.h5", keras.applications.VGG16, input_shape=(64, 64, 3), classes=10
    )


@pytest.fixture(scope="module")
def vgg16_file(vgg16_keras) -> str:
    return vgg16_keras[0]


@pytest.fixture(scope="module")
def vgg19_notop_file(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("keras")
    path, _ = _keras_file(
        folder / "vgg19_notop.h5",
        keras.applications.VGG19,
        include_top=False,
        input_shape=(32, 32, 3),
    )
    return path


def _load(path, arch, classes, size, exclude=()):
    """build_vgg in a graph with ``path`` loaded: (session, model, names loaded)."""
    graph = tf.Graph()
    with graph.as_default():
        model = build_vgg(arch, classes, size, dropout=0.0)
        session = v1.Session(graph=graph)
        session.run(v1.global_variables_initializer())
    graph.finalize()  # as in training: loading must not add ops
    return session, model, keras_weights.load(session, model, path, exclude)


def _same_outputs(reference: keras.Model, path: str, arch: str, classes: int, size: int):
    """Our network with the file's weights computes keras.applications' network.

    fc2's activations are compared as well as the probabilities: random weights give nearly
    uniform probabilities, which a wrong mapping could still match.
    """
    images = np.random.default_rng(1).normal(0, 60, (2, size, size, 3)).astype(np.float32)
    features = keras.Model(reference.input, reference.get_layer("fc2").output)
    expected_fc2, expected = features(images).numpy(), reference(images).numpy()
    session, model, loaded = _load(path, arch, classes, size)
    try:
        assert loaded == [layer.name for layer in reference.layers if layer.weights]
        fc2, logits = session.run(
            [model.get_layer("fc2").output, model.output], {model.input: images}
        )
    finally:
        session.close()
    assert expected_fc2.std() > 0
    np.testing.assert_allclose(fc2, expected_fc2, rtol=1e-4, atol=1e-4 * abs(expected_fc2).max())
    # keras.applications ends in a softmax, ours in logits
    np.testing.assert_allclose(tf.nn.softmax(logits).numpy(), expected, rtol=1e-4, atol=1e-6)


def test_vgg16_file_round_trips_by_name(vgg16_keras):
    vgg16_file, reference = vgg16_keras
    _same_outputs(reference, vgg16_file, "vgg16", 10, 64)
    settings = keras_weights.infer_settings(vgg16_file, keras_weights.read_layers(vgg16_file))
    assert settings == {"arch": "vgg16", "width_multiplier": 1.0, "class_num": 10, "image_size": 64}


@pytest.mark.slow
@stack_neutral  # the 64 px test above maps the same names on TF 1.15
def test_full_size_vgg16_name_mapping(tmp_path):
    """The published shape: 224 px, 1000 classes, 138M parameters (~550 MB file, ~15 s CPU,
    3 GB); the 64 px test above covers the same mapping in less time."""
    path, reference = _keras_file(tmp_path / "vgg16_full.h5", keras.applications.VGG16)
    _same_outputs(reference, path, "vgg16", 1000, 224)
    settings = keras_weights.infer_settings(path, keras_weights.read_layers(path))
    assert (settings["class_num"], settings["image_size"]) == (1000, 224)


def test_vgg19_notop_file_fills_the_convolutions(vgg19_notop_file):
    layers = keras_weights.read_layers(vgg19_notop_file)
    session, model, loaded = _load(vgg19_notop_file, "vgg19", 10, 32, exclude=TOP)
    try:
        assert loaded == list(layers) and len(loaded) == 16 and "block5_conv4" in loaded
        for name in loaded:
            kernel, bias = session.run(model.get_layer(name).weights)
            np.testing.assert_array_equal(kernel, layers[name][0])
            np.testing.assert_array_equal(bias, layers[name][1])
    finally:
        session.close()
    settings = keras_weights.infer_settings(vgg19_notop_file, layers)
    assert settings == {"arch": "vgg19", "width_multiplier": 1.0}


@pytest.mark.parametrize(
    "arch, classes, exclude, message",
    [
        ("vgg16", 10, TOP, "has layer block3_conv4 that the vgg16 model lacks"),
        ("vgg19", 10, (), "has no layer fc1 (a _notop file? add fc1,fc2,predictions"),
    ],
)
def test_wrong_network_for_the_file(vgg19_notop_file, arch, classes, exclude, message):
    with pytest.raises(UsageError, match=re.escape(f"{vgg19_notop_file}: {message}")):
        _load(vgg19_notop_file, arch, classes, 32, exclude)


def test_class_count_mismatch_names_the_way_out(vgg16_file):
    with pytest.raises(UsageError, match="^--restore_exclude predictons: the model has no such"):
        _load(vgg16_file, "vgg16", 5, 64, exclude=["predictons"])
    with pytest.raises(UsageError) as err:
        _load(vgg16_file, "vgg16", 5, 64)
    assert str(err.value) == (
        f"{vgg16_file}: predictions is for 10 classes, the model has 5 (set --class_num, "
        "or add predictions to --restore_exclude to train a new classifier)"
    )


def test_unusable_files(tmp_path):
    text = tmp_path / "weights.h5"
    text.write_text("not hdf5")
    with pytest.raises(UsageError, match=f"^{text}: not an HDF5 Keras weight file"):
        keras_weights.read_layers(str(text))
    with pytest.raises(UsageError, match="file not found"):
        keras_weights.read_layers(str(tmp_path / "missing.h5"))

    def train_config(*flags):
        return commands.train_config(cli.train_args(["--synthetic", *flags]))

    with pytest.raises(UsageError, match="^--weights: expected imagenet or keras_imagenet:PATH"):
        train_config("--weights", "vgg16.h5")
    with pytest.raises(UsageError, match="^--weights: use either --weights or --restore_path"):
        train_config("--weights", "keras_imagenet:x.h5", "--restore_path", "runs")
    with pytest.raises(UsageError, match="^--weights: keras.applications publishes .* not vgg11"):
        train_config("--weights", "imagenet", "--arch", "vgg11")
    assert train_config("--weights", "imagenet").loop.weights == "imagenet"


def test_weights_imagenet_takes_the_file_from_keras_cache(tmp_path, monkeypatch):
    """``--weights imagenet``: keras.applications' file in $KERAS_HOME/models is used as it is
    (nothing is downloaded); with or without the top, for VGG16 or VGG19."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    said = []
    for arch, top in keras_weights.PUBLISHED:
        name = keras_weights.published_name(arch, top)
        (tmp_path / "models" / name).write_bytes(b"")
        found = keras_weights.locate("imagenet", arch, said.append, top=top)
        assert found == str(tmp_path / "models" / name)
        assert said[-1] == f"--weights imagenet: {found} (from Keras' cache)"
    assert keras_weights.locate("keras_imagenet:/x/y.h5", "vgg16", said.append) == "/x/y.h5"
    # export's and predict's --weights: another spelling names what is expected.
    for spec in ("keras:/x/y.h5", "keras_imagenet:", "imagenet21k"):
        with pytest.raises(UsageError, match="^--weights: expected imagenet or keras_imagenet:"):
            keras_weights.locate(spec, "vgg16", said.append)


def test_caffe_normalization_is_keras_applications_preprocess_input():
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 5, 5, 3)).astype(np.float32)
    expected = keras.applications.vgg16.preprocess_input(pixels.copy())
    np.testing.assert_allclose(preprocess.normalize(pixels, "caffe").numpy(), expected, atol=1e-4)
    # Another normalisation is refused where settings are read, before any graph is built.
    with pytest.raises(UsageError, match="^--preprocess: must be one of imagenet, caffe"):
        commands.train_config(cli.train_args(["--synthetic", "--preprocess", "torch"]))


def test_pipelines_thread_the_normalization(demo_dir):
    """Same pixels either way: only the final normalisation differs (eval and train streams)."""

    def first_batch(make, normalization):
        settings = dict(data_dir=demo_dir, image_size=32, class_num=10, batch_size=8)
        config = config_lib.resolve(settings={**settings, "preprocess": normalization})
        split = pipeline.load_split(config.input, "validation")
        if make is pipeline.eval_dataset:
            dataset = make(split, config.network, config.input, 8)
        else:
            dataset = make(split, config.network, config.input, seed=0)
        return next(iter(dataset))[0].numpy()

    for make in (pipeline.eval_dataset, pipeline.train_dataset):
        ours, caffe = first_batch(make, "imagenet"), first_batch(make, "caffe")
        from_ours = ours * np.array(preprocess.STDDEV_RGB) + np.array(preprocess.MEAN_RGB)
        from_caffe = (caffe + np.array(preprocess.CAFFE_MEAN_BGR))[..., ::-1]
        np.testing.assert_allclose(from_caffe, from_ours, atol=1e-3)


@pytest.mark.slow
def test_training_starts_from_a_weight_file(script_runner, demo_dir, tmp_path):
    """--weights with the default --restore_exclude keeps the file's features, not its top.

    The file is Keras's ``save_weights`` of a width-scaled network (the layout of the published
    files, tested above): a full-width VGG would make this run take half a minute.
    """
    weights_file = str(tmp_path / "small.h5")
    build_vgg("vgg16", 10, 32, width_multiplier=0.0625).save_weights(weights_file)
    log_dir = tmp_path / "run"
    proc = script_runner(
        "run_train.py",
        "--preset", "demo",
        "--data_dir", demo_dir,
        "--log_dir", log_dir,
        "--width_multiplier", "0.0625",
        "--weights", f"keras_imagenet:{weights_file}",
        "--preprocess", "caffe",
        "--lr", "1e-9",
        "--warmup_epochs", "0",
        "--batch_size", "4",
        "--max_train_steps", "1",
        "--mode", "train",
        "--progress", "false",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"initialised 15 layers from {weights_file}\n" in proc.stdout
    layers = keras_weights.read_layers(weights_file)
    trained = tf.train.load_checkpoint(rundir.latest_checkpoint(str(log_dir)))
    for name in ("block1_conv1", "block5_conv3", "fc2"):
        np.testing.assert_allclose(trained.get_tensor(f"{name}/kernel"), layers[name][0], atol=1e-6)
    assert not np.allclose(trained.get_tensor("predictions/kernel"), layers["predictions"][0])
    with open(log_dir / "config.json") as f:
        assert json.load(f)["preprocess"] == "caffe"
    # The run's config.json carries caffe preprocessing into export and prediction.
    assert export.from_checkpoint(str(log_dir)).config.network.preprocess == "caffe"
    assert os.path.exists(log_dir / "model.ckpt-1.index")
