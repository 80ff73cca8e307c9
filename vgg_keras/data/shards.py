"""Writing TFRecord shards atomically: a shard is visible under its name only when complete."""

from __future__ import annotations

import os
from collections.abc import Iterable

from vgg_keras import atomic
from vgg_keras.compat import tf
from vgg_keras.data import schema


def write_shard(path: str, examples: Iterable[tf.train.Example]) -> int:
    """Write ``examples`` to ``path`` via ``path.tmp``; returns the record count."""
    count = 0
    with atomic.replacing(path) as tmp, tf.io.TFRecordWriter(tmp) as writer:
        for example in examples:
            writer.write(example.SerializeToString(deterministic=True))
            count += 1
    return count


def write_split(
    examples: list[tf.train.Example], out_dir: str, split: str, num_shards: int
) -> dict[str, int]:
    """Deal ``examples`` round-robin into ``num_shards`` shards; returns {file name: records}."""
    counts = {}
    for index in range(num_shards):
        name = schema.shard_name(split, index, num_shards)
        counts[name] = write_shard(os.path.join(out_dir, name), examples[index::num_shards])
    return counts
