"""The embedded demo dataset: scikit-learn's handwritten digits as TF-slim ImageNet TFRecords.

1,797 8x8 grey images of 10 digits (they ship inside scikit-learn, nothing is downloaded),
upscaled to 32x32 and JPEG-encoded as single-channel images, labels 1..10 like ImageNet's
1..1000, with a fixed stratified 80/20 train/validation split.  Build it with ``make data`` or
``python -m vgg_keras.data.demo OUT_DIR``; ``run_train.py --preset demo`` builds it on first use.
"""

from __future__ import annotations

import os

import numpy as np

from vgg_keras import storage
from vgg_keras.cli import UsageParser  # errors become one line and exit code 2
from vgg_keras.compat import tf
from vgg_keras.data import info, schema, shards
from vgg_keras.errors import run_cli

IMAGE_SIDE = 32
TRAIN_SHARDS = 4
EVAL_SHARDS = 2
NAME = "sklearn_digits"
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _examples(images: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> list:
    examples = []
    for i in indices:
        grey = images[i].reshape(8, 8, 1).astype(np.float32) * (255.0 / 16.0)
        big = tf.image.resize(grey, [IMAGE_SIDE, IMAGE_SIDE], method="bilinear")
        pixels = tf.cast(tf.clip_by_value(tf.round(big), 0, 255), tf.uint8)
        jpeg = tf.io.encode_jpeg(pixels, quality=95).numpy()
        digit = int(labels[i])
        examples.append(
            schema.to_example(
                jpeg,
                digit + 1,
                IMAGE_SIDE,
                IMAGE_SIDE,
                synset=f"digit{digit}",
                text=DIGIT_NAMES[digit],
                filename=f"digit{digit}_{i:04d}.jpg",
                channels=1,
                colorspace="Grayscale",
            )
        )
    return examples


def built_info(out_dir: str) -> dict | None:
    """The dataset info when ``out_dir`` holds a complete demo dataset, else None."""
    if not storage.exists(os.path.join(out_dir, info.INFO_FILE)):
        return None
    existing = info.read_info(out_dir)
    if existing.get("name") == NAME and all(
        storage.exists(os.path.join(out_dir, name)) for name in existing.get("files", {})
    ):
        return existing
    return None


def build(out_dir: str, overwrite: bool = False) -> dict:
    """Write the demo shards, labels.txt and dataset_info.json into ``out_dir``; returns the info.

    Skips the work when ``out_dir`` already holds a complete demo dataset, and refuses a folder
    holding another dataset's files (``overwrite`` replaces them): ``info.claim``.  Processes
    building it at the same time (the workers of a local multi-worker run) write the same
    bytes, each shard under a temporary name, and the manifest last.
    """
    existing = built_info(out_dir)
    if existing:
        return existing
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    train_idx, eval_idx = train_test_split(
        np.arange(len(digits.target)), test_size=0.2, random_state=0, stratify=digits.target
    )
    info.claim(out_dir, {"demo": NAME}, overwrite)
    files = {}
    for split, indices, num_shards in (
        ("train", train_idx, TRAIN_SHARDS),
        ("validation", eval_idx, EVAL_SHARDS),
    ):
        examples = _examples(digits.images, digits.target, np.sort(indices))
        files.update(shards.write_split(examples, out_dir, split, num_shards))
    result = {
        "name": NAME,
        "num_classes": 10,
        "label_offset": 1,
        "splits": {"train": len(train_idx), "validation": len(eval_idx)},
        "synsets": [f"digit{d}" for d in range(10)],
        "texts": list(DIGIT_NAMES),
        "files": files,
    }
    return info.write_info(out_dir, result)


def main(argv: list[str] | None = None) -> int:
    parser = UsageParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", default="data/demo")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the dataset out_dir holds"
    )
    args = parser.parse_args(argv)
    result = build(args.out_dir, args.overwrite)
    print(f"demo dataset in {args.out_dir}: {result['splits']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
