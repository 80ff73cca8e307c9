"""TFDS-prepared datasets as input: ``--data_dir tfds:NAME[:SPLIT] --tfds_data_dir DIR``.

TFDS writes its splits as TFRecord shards of ``tf.train.Example`` with an ``image`` (encoded
JPEG for ImageNet) and a 0-based ``label``, and records the shard lengths in its dataset info,
so the same pipeline reads them with a different parse function and exact sizes.  Nothing is
downloaded: the dataset must have been prepared already (for ImageNet, from the user's own tar
files with ``tfds build imagenet2012 --manual_dir ...``).  ``:SPLIT`` replaces the evaluation
split (default ``validation``), e.g. ``tfds:imagenet_v2:test`` for run_eval.py.
"""

from __future__ import annotations

import os

from vgg_keras.errors import UsageError, reason

PREFIX = "tfds:"


def locate(spec: str, split: str, tfds_data_dir: str | None) -> tuple[tuple, tuple]:
    """(files, exact record counts) of ``split`` ('train'/'validation') of a TFDS dataset."""
    name, *rest = spec[len(PREFIX) :].split(":")
    if not name or len(rest) > 1:
        raise UsageError(f"--data_dir {spec}: expected tfds:NAME or tfds:NAME:SPLIT")
    tfds_split = rest[0] if split == "validation" and rest else split
    from vgg_keras import compat

    tfds = compat.import_tfds()
    try:
        builder = tfds.builder(name, data_dir=tfds_data_dir)
    except Exception as err:  # tfds raises several types for unknown or unprepared datasets
        raise UsageError(f"--data_dir {spec}: {reason(err)}") from err
    # (TFDS 3.2, the one for TF 1.15, has no is_prepared(); both write this file last)
    if not os.path.exists(os.path.join(builder.data_dir, "dataset_info.json")):
        raise UsageError(
            f"--data_dir {spec}: not prepared in {tfds_data_dir or 'the default TFDS folder'} "
            "(prepare it first; nothing is downloaded here)"
        )
    if str(getattr(builder.info, "file_format", "tfrecord")).lower().find("tfrecord") < 0:
        raise UsageError(f"--data_dir {spec}: only TFRecord-based TFDS datasets are supported")
    if tfds_split not in builder.info.splits:
        known = ", ".join(sorted(builder.info.splits))
        raise UsageError(f"--data_dir {spec}: no split {tfds_split!r} (has {known})")
    info = builder.info.splits[tfds_split]
    files = tuple(os.path.join(builder.data_dir, f) for f in info.filenames)
    return files, tuple(int(n) for n in info.shard_lengths)
