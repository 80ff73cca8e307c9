"""The embedded demo dataset: scikit-learn's digits as TF-slim TFRecords, built without download."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import demo_config
from sklearn.datasets import load_digits

from vgg_keras import clock
from vgg_keras.compat import tf
from vgg_keras.data import info, pipeline
from vgg_keras.errors import run_cli
from vgg_keras.tools import demo

FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
    "image/filename": tf.io.FixedLenFeature([], tf.string),
    "image/channels": tf.io.FixedLenFeature([], tf.int64),
}


def _records(data_dir: str, split: str) -> list[dict]:
    files = pipeline.list_files(data_dir, split)
    return [tf.io.parse_single_example(r, FEATURES) for r in tf.data.TFRecordDataset(files)]


def _upscaled(digit: np.ndarray) -> np.ndarray:
    grey = digit.reshape(8, 8, 1).astype(np.float32) * (255.0 / 16.0)
    side = demo.IMAGE_SIDE
    return tf.image.resize(grey, [side, side], method="bilinear").numpy()[..., 0]


def test_info_and_files(demo_dir):
    meta = info.read_info(demo_dir)
    assert meta["name"] == "sklearn_digits" and meta["num_classes"] == 10
    assert meta["label_offset"] == 1
    train, val = meta["splits"]["train"], meta["splits"]["validation"]
    assert train + val == 1797
    assert 0.19 < val / 1797 < 0.21
    assert len(meta["files"]) == demo.TRAIN_SHARDS + demo.EVAL_SHARDS
    for name, count in meta["files"].items():
        assert pipeline.count_records(os.path.join(demo_dir, name)) == count
    inp = demo_config(data_dir=demo_dir).input
    assert pipeline.load_split(inp, "train").num_examples == train
    assert pipeline.load_split(inp, "validation").num_examples == val
    assert info.read_labels(os.path.join(demo_dir, info.LABELS_FILE)) == list(demo.DIGIT_NAMES)


@pytest.mark.parametrize("split", ["train", "validation"])
def test_labels_are_one_based_and_every_class_is_present(demo_dir, split):
    stored = [int(r["image/class/label"]) for r in _records(demo_dir, split)]
    assert sorted(set(stored)) == list(range(1, 11))


def test_images_are_the_sklearn_digits(demo_dir):
    digits = load_digits()
    records = _records(demo_dir, "train") + _records(demo_dir, "validation")
    indices = set()
    for record in records[::37]:
        name = record["image/filename"].numpy().decode()  # digit<d>_<index>.jpg
        digit, index = int(name[5]), int(name[7:11])
        indices.add(index)
        assert digits.target[index] == digit == int(record["image/class/label"]) - 1
        assert int(record["image/channels"]) == 1
        pixels = tf.io.decode_jpeg(record["image/encoded"]).numpy()
        assert pixels.shape == (demo.IMAGE_SIDE, demo.IMAGE_SIDE, 1)
        # The source digit, upscaled as described in demo.py, within JPEG error; another
        # digit is far off.
        assert np.abs(pixels[..., 0] - _upscaled(digits.images[index])).mean() < 3.0
        assert np.abs(pixels[..., 0] - _upscaled(digits.images[index + 1])).mean() > 8.0
    assert len(indices) == len(records[::37])
    all_files = {r["image/filename"].numpy() for r in records}
    assert len(all_files) == 1797, "no image in both splits, none missing"


def test_demo_through_both_pipelines(demo_dir):
    """The demo preset's settings: 10 classes at 32 px, batches of 32, a 2000-record buffer."""
    meta = info.read_info(demo_dir)
    c = demo_config(data_dir=demo_dir)
    assert (c.network.class_num, c.network.image_size, c.input.batch_size) == (10, 32, 32)
    val = pipeline.load_split(c.input, "validation")
    seen = sum(int(x.shape[0]) for x, _ in pipeline.eval_dataset(val, c.network, c.input, 64))
    assert seen == meta["splits"]["validation"]
    train = pipeline.load_split(c.input, "train")
    images, labels = next(iter(pipeline.train_dataset(train, c.network, c.input, seed=0)))
    assert images.shape == (32, 32, 32, 3) and labels.shape == (32,)
    assert len(set(labels.numpy().tolist())) > 3, "the shuffle mixes the classes"


def test_the_demo_run_is_20_epochs_of_whole_batches(demo_dir):
    """Steps per epoch are the training images // the batch (as the reference counts them):
    1437 // 32 = 44, and the demo's 20 epochs are 880 steps."""
    c = demo_config(data_dir=demo_dir)
    train_images = info.read_info(demo_dir)["splits"]["train"]
    plan = clock.plan(c, train_images)
    assert plan.steps_per_epoch == train_images // 32 == 44
    assert plan.max_steps == 20 * 44 == 880
    # Saved every epoch, evaluated every 5 epochs, logged every 50 steps.
    assert plan.every == {"log": 50, "save": 44, "evaluate": 220}


def test_build_is_idempotent_and_main_reports(demo_dir, capsys):
    stamps = {name: os.path.getmtime(os.path.join(demo_dir, name)) for name in os.listdir(demo_dir)}
    assert demo.build(demo_dir) == info.read_info(demo_dir)
    assert demo.main([demo_dir]) == 0
    assert f"demo dataset in {demo_dir}" in capsys.readouterr().out
    after = {name: os.path.getmtime(os.path.join(demo_dir, name)) for name in os.listdir(demo_dir)}
    assert after == stamps, "a complete demo dataset is not rewritten"


def test_build_refuses_a_folder_holding_another_dataset(tmp_path, shard_writer, capsys):
    """The demo builder into another dataset's folder: one line, exit 2, that folder unchanged
    (its dataset_info.json, labels.txt and shards are not the demo's to replace)."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(4)]
    shard_writer(str(tmp_path), images, [1, 2, 1, 2], num_classes=2)
    (tmp_path / info.LABELS_FILE).write_text("cat\ndog\n")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert run_cli(demo.main, [str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path}/dataset_info.json: the output folder holds another dataset's files; "
        "use an empty folder, or --overwrite to replace that dataset\n"
    )
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
