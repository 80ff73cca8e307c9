"""The TF-slim ImageNet ``tf.train.Example`` schema, as written by ``build_imagenet_data.py``.

Labels are stored 1..num_classes (0 is the background class of TF-slim); readers subtract
``label_offset`` (default 1).  Bounding-box features may be empty or absent.
"""

from __future__ import annotations

from vgg_keras.compat import tf

SPLIT_PREFIXES = {"train": "train", "validation": "validation"}


def shard_name(split: str, index: int, num_shards: int) -> str:
    """``train-00000-of-01024`` style shard names."""
    return f"{SPLIT_PREFIXES[split]}-{index:05d}-of-{num_shards:05d}"


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def _floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def to_example(
    encoded: bytes,
    label: int,
    height: int,
    width: int,
    *,
    synset: str = "",
    text: str = "",
    filename: str = "",
    channels: int = 3,
    colorspace: str = "RGB",
    bboxes: list[tuple[float, float, float, float]] | None = None,
) -> tf.train.Example:
    """One record; ``bboxes`` are (xmin, ymin, xmax, ymax) fractions of the image."""
    bboxes = bboxes or []
    feature = {
        "image/encoded": _bytes([encoded]),
        "image/format": _bytes([b"JPEG"]),
        "image/class/label": _ints([label]),
        "image/class/synset": _bytes([synset.encode()]),
        "image/class/text": _bytes([text.encode()]),
        "image/height": _ints([height]),
        "image/width": _ints([width]),
        "image/channels": _ints([channels]),
        "image/colorspace": _bytes([colorspace.encode()]),
        "image/filename": _bytes([filename.encode()]),
        "image/object/bbox/xmin": _floats([b[0] for b in bboxes]),
        "image/object/bbox/ymin": _floats([b[1] for b in bboxes]),
        "image/object/bbox/xmax": _floats([b[2] for b in bboxes]),
        "image/object/bbox/ymax": _floats([b[3] for b in bboxes]),
        "image/object/bbox/label": _ints([label] * len(bboxes)),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    "image/object/bbox/xmin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/xmax": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymax": tf.io.VarLenFeature(tf.float32),
}


def parse(serialized, label_offset: int = 1):
    """Parse one serialized Example into (jpeg_bytes, label, bboxes).

    ``label`` is int32 in 0..num_classes-1 (stored label minus ``label_offset``); ``bboxes`` is
    float32 (1, n, 4) as (ymin, xmin, ymax, xmax), the layout
    ``sample_distorted_bounding_box`` takes; n may be 0.
    """
    parsed = tf.io.parse_single_example(serialized, _FEATURES)
    label = tf.cast(parsed["image/class/label"], tf.int32) - label_offset
    coords = [
        tf.sparse.to_dense(parsed[f"image/object/bbox/{k}"])
        for k in ("ymin", "xmin", "ymax", "xmax")
    ]
    bboxes = tf.expand_dims(tf.stack(coords, axis=-1), 0)
    return parsed["image/encoded"], label, bboxes


def parse_many(serialized, label_offset: int = 1):
    """:func:`parse` of a vector of n records in one op: (jpegs (n,), labels (n,), bboxes
    (n, m, 4) zero-padded to the most boxes m of any record, counts (n,)): record i's boxes are
    ``bboxes[i, :counts[i]]``.  A record whose four coordinate lists differ in length is an
    error, as in :func:`parse`."""
    parsed = tf.io.parse_example(serialized, _FEATURES)
    labels = tf.cast(parsed["image/class/label"], tf.int32) - label_offset
    sparse = [parsed[f"image/object/bbox/{k}"] for k in ("ymin", "xmin", "ymax", "xmax")]
    same = [
        tf.debugging.assert_equal(s.indices, sparse[0].indices, message="bbox lists differ")
        for s in sparse[1:]
    ]
    with tf.control_dependencies(same):
        bboxes = tf.stack([tf.sparse.to_dense(s) for s in sparse], axis=-1)
    ones = tf.SparseTensor(sparse[0].indices, tf.ones_like(sparse[0].values), sparse[0].dense_shape)
    counts = tf.cast(tf.reduce_sum(tf.sparse.to_dense(ones), axis=1), tf.int32)
    return parsed["image/encoded"], labels, bboxes, counts


_TFDS_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
}


def parse_tfds(serialized, label_offset: int = 0):
    """Parse one record of a TFDS-prepared image dataset (``image`` JPEG, ``label`` 0-based).

    Returns the same (jpeg_bytes, label, bboxes) as :func:`parse`, with no boxes.  TFDS labels
    are 0-based already: ``label_offset`` is accepted (the signature :func:`parse` has) and
    ignored.
    """
    parsed = tf.io.parse_single_example(serialized, _TFDS_FEATURES)
    label = tf.cast(parsed["label"], tf.int32)
    return parsed["image"], label, tf.zeros([1, 0, 4], tf.float32)


def parse_tfds_many(serialized, label_offset: int = 0):
    """:func:`parse_tfds` of a vector of records, in the layout of :func:`parse_many`."""
    parsed = tf.io.parse_example(serialized, _TFDS_FEATURES)
    n = tf.shape(serialized)[0]
    bboxes = tf.zeros([n, 0, 4], tf.float32)
    return parsed["image"], tf.cast(parsed["label"], tf.int32), bboxes, tf.zeros([n], tf.int32)
