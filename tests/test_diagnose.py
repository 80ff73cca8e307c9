"""Bad data: diagnose names the file and record; the pipelines raise, or skip with skip_corrupt.

Each case breaks record 5 of 12 (labels 1..12, two shards dealt round-robin), which is record 2
of shard 1.
"""

from __future__ import annotations

import os
import re
import struct

import numpy as np
import pytest

from vgg_keras import config
from vgg_keras.compat import tf
from vgg_keras.data import diagnose, pipeline, schema

NUM = 12  # records and classes
SIZE = 32
KINDS = {
    # kind: (reason pattern, whether it breaks the eval pipeline too)
    "garbage_bytes": ("image/encoded \\(\\d+ bytes\\) is not a decodable JPEG image", True),
    "half_a_jpeg": ("is not a decodable JPEG image", True),
    # decode_jpeg (eval) also decodes PNG; extract_jpeg_shape (train) does not.
    "png_bytes": ("is not a decodable JPEG image", False),
    "label_zero": ("label -1 \\(stored 0 minus label_offset 1\\) is outside \\[0, 12\\)", True),
    "label_too_high": (
        "label 12 \\(stored 13 minus label_offset 1\\) is outside \\[0, 12\\)",
        True,
    ),
    "not_an_example": ("not a TF-slim tf.train.Example", True),
    "truncated_file": ("truncated or corrupt record", True),
    "box_outside_image": ("bounding box coordinate is outside \\[0, 1\\]", False),
}


def _parts(**settings):
    """(Network, Input) for these records: NUM classes at SIZE pixels."""
    values = {"class_num": NUM, "image_size": SIZE, **settings}
    c = config.resolve(settings=values, need_data=False)
    return c.network, c.input


def _eval(split, skip_corrupt=False):
    network, inp = _parts(skip_corrupt=skip_corrupt)
    return pipeline.eval_dataset(split, network, inp, 4)


def _train(split, skip_corrupt=False):
    network, inp = _parts(batch_size=1, shuffle_buffer=NUM, skip_corrupt=skip_corrupt)
    return pipeline.train_dataset(split, network, inp, seed=0)


def _record_offsets(path: str) -> list[int]:
    """Byte offsets where each record starts (TFRecord framing: length, crc, data, crc)."""
    offsets, pos, size = [], 0, os.path.getsize(path)
    with open(path, "rb") as f:
        while pos < size:
            offsets.append(pos)
            f.seek(pos)
            (length,) = struct.unpack("<Q", f.read(8))
            pos += 8 + 4 + length + 4
    return offsets


def _replace_record(path: str, index: int, data: bytes) -> None:
    records = [r.numpy() for r in tf.data.TFRecordDataset(path)]
    records[index] = data
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)


def _build(directory: str, shard_writer, jpeg_encoder, kind: str):
    """(shard paths, labels (0-based) of the records a pipeline can still use)."""
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(NUM)]
    labels = list(range(1, NUM + 1))
    bboxes = [None] * NUM
    good = set(range(NUM)) - {5}
    if kind == "garbage_bytes":
        images[5] = b"\xff\xd8\xff\xe0 these bytes are not an image " * 3
    elif kind == "half_a_jpeg":
        jpeg = jpeg_encoder(images[5])
        images[5] = jpeg[: len(jpeg) // 2]
    elif kind == "png_bytes":
        images[5] = tf.image.encode_png(images[5]).numpy()
    elif kind == "label_zero":
        labels[5] = 0
    elif kind == "label_too_high":
        labels[5] = NUM + 1
    elif kind == "box_outside_image":
        bboxes[5] = [(-0.5, 0.0, 1.5, 1.0)]
    paths = shard_writer(directory, images, labels, num_shards=2, bboxes=bboxes, num_classes=NUM)
    if kind == "not_an_example":
        _replace_record(paths[1], 2, b"these bytes are no tf.train.Example")
    elif kind == "truncated_file":
        # Cut shard 1 in the middle of its record 2: records 5, 7, 9, 11 are lost.
        with open(paths[1], "r+b") as f:
            f.truncate(_record_offsets(paths[1])[2] + 30)
        good -= {7, 9, 11}
    return paths, good


@pytest.fixture(scope="module", params=sorted(KINDS))
def broken(request, tmp_path_factory, shard_writer, jpeg_encoder):
    """(kind, shard paths, usable labels); the files are shared, so tests must not change them."""
    directory = str(tmp_path_factory.mktemp(request.param))
    paths, good = _build(directory, shard_writer, jpeg_encoder, request.param)
    return request.param, paths, good


def test_clean_data_has_no_bad_record(tmp_path, shard_writer, jpeg_encoder, demo_dir):
    paths, _ = _build(str(tmp_path), shard_writer, jpeg_encoder, "clean")
    assert diagnose.find_bad_record(paths, NUM) is None
    assert diagnose.count_bad_records(paths, NUM) == 0
    # Grayscale JPEGs, 1,797 of them: no false alarm.
    demo_files = pipeline.list_files(demo_dir, "train") + pipeline.list_files(
        demo_dir, "validation"
    )
    assert diagnose.find_bad_record(demo_files, 10) is None


def test_find_bad_record_names_file_record_and_reason(broken):
    kind, paths, _ = broken
    bad = diagnose.find_bad_record(paths, NUM)
    assert bad is not None
    assert (bad.file, bad.index) == (paths[1], 2)
    assert re.search(KINDS[kind][0], bad.reason), bad.reason
    assert str(bad) == bad.message == f"{paths[1]}: record 2: {bad.reason}"
    assert "\n" not in str(bad)
    assert diagnose.count_bad_records(paths, NUM) == 1


def test_eval_pipeline_raises_or_skips(broken):
    kind, paths, good = broken
    split = pipeline.Split("train", tuple(paths), (6, 6))
    if not KINDS[kind][1]:
        good = set(range(NUM))
    else:
        with pytest.raises(tf.errors.OpError):
            list(_eval(split))
    skipped = _eval(split, skip_corrupt=True)
    labels = [int(y) for _, ys in skipped for y in ys.numpy()]
    assert sorted(labels) == sorted(good)


def test_train_pipeline_raises_or_skips(broken):
    _, paths, good = broken
    split = pipeline.Split("train", tuple(paths), (6, 6))
    with pytest.raises(tf.errors.OpError):
        list(_train(split).take(NUM))
    # With skip_corrupt the first epoch is exactly the usable records.
    skipped = _train(split, skip_corrupt=True)
    labels = [int(ys[0]) for _, ys in skipped.take(len(good))]
    assert sorted(labels) == sorted(good)


def test_first_problem_in_file_order_and_count_of_all(tmp_path, shard_writer):
    # 9 records in 3 shards: shard s holds records s, s + 3, s + 6.
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (24, 24, 3), dtype=np.uint8) for _ in range(9)]
    labels = list(range(1, 10))
    labels[6] = 0  # shard 0, record 2: its last record
    images[4] = b"not a jpeg"  # shard 1, record 1 ...
    labels[7] = 0  # ... and record 2
    paths = shard_writer(str(tmp_path), images, labels, num_shards=3, num_classes=9)
    with open(paths[2], "r+b") as f:  # shard 2: its last record cut short
        f.truncate(os.path.getsize(paths[2]) - 5)
    first = diagnose.find_bad_record(paths, 9)
    assert (first.file, first.index) == (paths[0], 2) and "stored 0" in first.reason
    second = diagnose.find_bad_record(paths[1:], 9)
    assert (second.file, second.index) == (paths[1], 1) and "JPEG" in second.reason
    last_first = diagnose.find_bad_record(paths[::-1], 9)
    assert (last_first.file, last_first.index) == (paths[2], 2)
    assert "truncated" in last_first.reason
    assert diagnose.count_bad_records(paths, 9) == 4
    assert [diagnose.count_bad_records([p], 9) for p in paths] == [1, 2, 1]
    # The label offset decides which labels are bad: stored 0..9 are fine for 10 classes.
    assert diagnose.find_bad_record(paths[:1], 10, label_offset=0) is None


def test_missing_file(tmp_path):
    missing = str(tmp_path / "train-00000-of-00001")
    bad = diagnose.find_bad_record([missing], NUM)
    assert bad.index is None and str(bad) == f"{missing}: file not found"
    assert diagnose.count_bad_records([missing], NUM) == 1


def test_works_from_inside_a_graph_context(tmp_path, shard_writer, jpeg_encoder):
    # The session loop calls it while its training graph is the default graph.
    paths, _ = _build(str(tmp_path), shard_writer, jpeg_encoder, "label_zero")
    with tf.Graph().as_default():
        assert not tf.executing_eagerly()
        bad = diagnose.find_bad_record(paths, NUM)
        assert diagnose.count_bad_records(paths, NUM) == 1
    assert (bad.file, bad.index) == (paths[1], 2)


def _tfds_record(jpeg: bytes, label: int) -> bytes:
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_other_record_formats_through_split_parse(tmp_path, jpeg_encoder):
    # TFDS records: "image" and a 0-based "label"; the split's own parser reads them.
    jpeg = jpeg_encoder(np.full((20, 20, 3), 90, np.uint8))
    path = str(tmp_path / "imagenet2012-train.tfrecord-00000-of-00001")
    with tf.io.TFRecordWriter(path) as writer:
        for label in (0, 3, 4, 1):
            writer.write(_tfds_record(jpeg, label))
    split = pipeline.Split("train", (path,), (4,), parse=schema.parse_tfds)
    bad = diagnose.find_bad_record([path], 4, parse=split.parse)
    assert str(bad) == f"{path}: record 2: label 4 is outside [0, 4)"
    assert diagnose.find_bad_record([path], 5, parse=split.parse) is None
    # Read as TF-slim records they have no image/encoded: said so, not a misleading label.
    slim = diagnose.find_bad_record([path], 5)
    assert (slim.index, slim.reason) == (0, "no image bytes (image/encoded is missing or empty)")
