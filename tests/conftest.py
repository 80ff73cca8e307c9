"""Shared fixtures: the demo dataset (built once per session) and a writer of small TFRecord shards.

Tests run in eager mode; graph mode only inside explicit ``with tf.Graph().as_default():``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pytest

from vgg_keras.compat import tf
from vgg_keras.data import demo, info, schema, shards

Box = tuple[float, float, float, float]  # (xmin, ymin, xmax, ymax) fractions, as schema.to_example


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """JPEG bytes of a uint8 (H, W) or (H, W, C) array (C = 1 or 3)."""
    pixels = np.asarray(image, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return tf.io.encode_jpeg(tf.constant(pixels), quality=quality).numpy()


def write_shards(
    out_dir: str,
    images: Sequence[np.ndarray | bytes],
    labels: Sequence[int],
    *,
    split: str = "train",
    num_shards: int = 1,
    bboxes: Sequence[list[Box] | None] | None = None,
    num_classes: int | None = None,
    with_info: bool = True,
) -> list[str]:
    """Write one split of records into ``out_dir``; returns the shard paths in order.

    ``images`` are uint8 arrays (JPEG-encoded here) or raw bytes stored as they are (to make
    broken records); ``labels`` are the *stored* labels (1-based, as TF-slim ImageNet).  Records
    are dealt round-robin into ``num_shards`` shards, so record ``r`` lands in shard
    ``r % num_shards`` at index ``r // num_shards``.  With ``with_info`` the folder's
    dataset_info.json gains this split's counts (other splits already there are kept).
    """
    os.makedirs(out_dir, exist_ok=True)
    examples = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        if isinstance(image, bytes):
            encoded, height, width = image, 0, 0
        else:
            encoded, (height, width) = encode_jpeg(image), np.shape(image)[:2]
        boxes = bboxes[i] if bboxes is not None else None
        examples.append(
            schema.to_example(encoded, int(label), int(height), int(width), bboxes=boxes)
        )
    counts = shards.write_split(examples, out_dir, split, num_shards)
    if with_info:
        meta = info.read_info(out_dir) or {"label_offset": 1, "splits": {}, "files": {}}
        meta["num_classes"] = num_classes or int(max(labels))
        meta["splits"][split] = len(examples)
        meta["files"].update(counts)
        info.write_info(out_dir, meta)
    return [os.path.join(out_dir, name) for name in sorted(counts)]


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> str:
    """The embedded digits dataset, built once per session. Treat it as read-only."""
    out = str(tmp_path_factory.mktemp("demo"))
    demo.build(out)
    return out


@pytest.fixture(scope="session")
def shard_writer():
    """``write_shards`` (see above) for tests that build their own small datasets."""
    return write_shards


@pytest.fixture(scope="session")
def jpeg_encoder():
    """``encode_jpeg`` (see above): uint8 array -> JPEG bytes."""
    return encode_jpeg
