"""The TF-slim Example schema: what to_example writes and what parse reads back."""

from __future__ import annotations

import numpy as np
import pytest

from vgg_keras.compat import tf
from vgg_keras.config import resolve
from vgg_keras.data import preprocess, schema


def _gradient(height: int, width: int) -> np.ndarray:
    """A smooth colour image, so JPEG error stays small."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack(
        [255 * x / (width - 1), 255 * y / (height - 1), 128 + 60 * np.sin(x / 5.0)], axis=-1
    ).astype(np.uint8)


def _records(paths):
    return [r for r in tf.data.TFRecordDataset(paths)]


def test_shard_names():
    assert schema.shard_name("train", 3, 1024) == "train-00003-of-01024"
    assert schema.shard_name("validation", 127, 128) == "validation-00127-of-00128"


@pytest.mark.parametrize("label_offset", [1, 0])
def test_round_trip_labels_exact_pixels_within_jpeg_tolerance(tmp_path, shard_writer, label_offset):
    images = [_gradient(24 + 4 * i, 40 - 2 * i) for i in range(6)]
    stored = [1, 1000, 7, 500, 2, 999]
    paths = shard_writer(str(tmp_path), images, stored, num_shards=2)
    records = _records(paths)
    # write_split deals round-robin: shard 0 holds records 0, 2, 4, shard 1 holds 1, 3, 5.
    order = [0, 2, 4, 1, 3, 5]
    assert len(records) == 6
    for serialized, i in zip(records, order):
        jpeg, label, bboxes = schema.parse(serialized, label_offset)
        assert label.dtype == tf.int32
        assert int(label) == stored[i] - label_offset
        assert bboxes.shape == (1, 0, 4)
        pixels = tf.io.decode_jpeg(jpeg, channels=3).numpy().astype(np.int32)
        assert pixels.shape == images[i].shape
        assert np.abs(pixels - images[i]).mean() < 2.0


def test_all_tf_slim_features_written():
    example = schema.to_example(
        b"\xff\xd8jpeg",
        17,
        480,
        640,
        synset="n01440764",
        text="tench, Tinca tinca",
        filename="n01440764_10026.JPEG",
        bboxes=[(0.1, 0.2, 0.6, 0.9), (0.0, 0.0, 1.0, 1.0)],
    )
    f = example.features.feature
    assert f["image/encoded"].bytes_list.value == [b"\xff\xd8jpeg"]
    assert f["image/format"].bytes_list.value == [b"JPEG"]
    assert f["image/class/label"].int64_list.value == [17]
    assert f["image/class/synset"].bytes_list.value == [b"n01440764"]
    assert f["image/class/text"].bytes_list.value == [b"tench, Tinca tinca"]
    assert f["image/height"].int64_list.value == [480]
    assert f["image/width"].int64_list.value == [640]
    assert f["image/channels"].int64_list.value == [3]
    assert f["image/colorspace"].bytes_list.value == [b"RGB"]
    assert f["image/filename"].bytes_list.value == [b"n01440764_10026.JPEG"]
    np.testing.assert_allclose(f["image/object/bbox/xmin"].float_list.value, [0.1, 0.0])
    np.testing.assert_allclose(f["image/object/bbox/ymin"].float_list.value, [0.2, 0.0])
    np.testing.assert_allclose(f["image/object/bbox/xmax"].float_list.value, [0.6, 1.0])
    np.testing.assert_allclose(f["image/object/bbox/ymax"].float_list.value, [0.9, 1.0])
    assert f["image/object/bbox/label"].int64_list.value == [17, 17]


def test_bboxes_come_back_as_ymin_xmin_ymax_xmax(tmp_path, shard_writer):
    boxes = [(0.1, 0.2, 0.6, 0.9), (0.05, 0.15, 0.25, 0.35)]  # (xmin, ymin, xmax, ymax)
    paths = shard_writer(str(tmp_path), [_gradient(32, 32)], [3], bboxes=[boxes])
    _, _, bboxes = schema.parse(_records(paths)[0])
    np.testing.assert_allclose(
        bboxes.numpy(), [[[0.2, 0.1, 0.9, 0.6], [0.15, 0.05, 0.35, 0.25]]], rtol=1e-6
    )


def test_record_without_bbox_features_parses_and_preprocesses(jpeg_encoder):
    jpeg = jpeg_encoder(_gradient(40, 48))
    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[42])),
        "image/format": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"JPEG"])),
    }
    serialized = tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
    parsed_jpeg, label, bboxes = schema.parse(serialized)
    assert parsed_jpeg.numpy() == jpeg
    assert int(label) == 41
    assert bboxes.shape == (1, 0, 4) and bboxes.dtype == tf.float32
    settings = resolve(settings={"image_size": 32, "class_num": 100}, need_data=False)
    seed = tf.constant([1, 2], tf.int64)
    image = preprocess.train_image(parsed_jpeg, bboxes, seed, settings.network, settings.input)
    assert image.shape == (32, 32, 3)


def test_parse_inside_a_dataset_map(tmp_path, shard_writer):
    paths = shard_writer(str(tmp_path), [_gradient(16, 16)] * 3, [4, 5, 6])
    ds = tf.data.TFRecordDataset(paths).map(lambda r: schema.parse(r, 1)[1])
    assert [int(x) for x in ds] == [3, 4, 5]


def _example(jpeg: bytes, label: int, coordinates: dict) -> bytes:
    """A serialized record with the given bbox coordinate lists (absent when not given)."""
    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    }
    for name, values in coordinates.items():
        feature[f"image/object/bbox/{name}"] = tf.train.Feature(
            float_list=tf.train.FloatList(value=values)
        )
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_parse_many_gives_each_record_what_parse_gives(jpeg_encoder):
    boxes = [[], [(0.1, 0.2, 0.6, 0.9)], [(0.0, 0.0, 1.0, 1.0)] * 2 + [(0.3, 0.1, 0.4, 0.5)]]
    records = [
        schema.to_example(jpeg_encoder(_gradient(16 + i, 20)), 7 + i, 16 + i, 20, bboxes=b)
        for i, b in enumerate(boxes)
    ]
    records = [r.SerializeToString() for r in records]
    records.append(_example(b"\xff\xd8not all there", 3, {}))  # no bbox features at all
    jpegs, labels, bboxes, counts = schema.parse_many(tf.constant(records), 1)
    assert bboxes.shape == (4, 3, 4) and bboxes.dtype == tf.float32
    assert counts.numpy().tolist() == [0, 1, 3, 0]
    for i, serialized in enumerate(records):
        jpeg, label, one = schema.parse(serialized, 1)
        assert jpegs[i].numpy() == jpeg.numpy()
        assert int(labels[i]) == int(label) and labels.dtype == tf.int32
        np.testing.assert_array_equal(bboxes[i, : counts[i]].numpy(), one[0].numpy())
        np.testing.assert_array_equal(bboxes[i, counts[i] :].numpy(), 0.0)


@pytest.mark.parametrize("many", [False, True])
def test_a_record_whose_box_lists_differ_in_length_is_an_error(many):
    full = {name: [0.1, 0.5] for name in ("ymin", "xmin", "ymax", "xmax")}
    short = dict(full, xmax=[0.5])
    # Beside a record with two boxes, the short list would be padded: the check must see it.
    records = [_example(b"a", 1, full), _example(b"b", 1, short)]
    with pytest.raises(tf.errors.InvalidArgumentError):
        if many:
            schema.parse_many(tf.constant(records))[2].numpy()
        else:
            schema.parse(records[1])[2].numpy()


def test_parse_tfds_many_gives_each_record_what_parse_tfds_gives():
    def record(image: bytes, label: int) -> bytes:
        feature = {
            "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
            "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        }
        return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()

    records = [record(b"one", 0), record(b"two", 9)]
    jpegs, labels, bboxes, counts = schema.parse_tfds_many(tf.constant(records))
    assert bboxes.shape == (2, 0, 4) and counts.numpy().tolist() == [0, 0]
    for i, serialized in enumerate(records):
        jpeg, label, _ = schema.parse_tfds(serialized)
        assert jpegs[i].numpy() == jpeg.numpy() and int(labels[i]) == int(label)
