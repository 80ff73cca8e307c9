"""Figure 1: input pipeline images/s against a minimal tf.data pipeline and a Pillow one.

``python -m bench.input_pipeline`` (about 1.5 minutes on 2 cores).  The data are ImageNet-like
JPEGs (500x375 or 375x500, quality 90) cut at bench time from the real photographs that
scikit-image and scikit-learn ship, written as TF-slim TFRecord shards with the project's own
writers.  Three pipelines produce batches of 32 normalised 224x224 images, with 1 and 2 threads
(tf.data's private thread pool) or processes (Pillow):

- the project's ``pipeline.train_dataset`` / ``eval_dataset`` (reading the shards);
- (a) a minimal fused ``decode_and_crop_jpeg`` tf.data pipeline written the textbook way (TF's
  official ResNet preprocessing: stateful random crop and flip, ``(image - mean) / std``) over
  the same JPEG bytes held in memory: no files, parsing, shuffling or per-record seeds;
- (b) torchvision's transforms done with Pillow (bench/pillow_baseline.py).

Each rate is also given per CPU-second of the processes doing the work, which load from other
programs on the machine disturbs far less than the wall-clock rate.

Targets (issue 8): project >= 0.95x (a); project >= 2.5x (b) per core, for train and eval.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

from bench import common
from vgg_keras import compat, config
from vgg_keras.compat import tf
from vgg_keras.data import info, pipeline, preprocess, schema, shards

NAME = "input_pipeline"
BATCH = 32
IMAGE_SIZE = 224
TRAIN_SHARDS, EVAL_SHARDS = 8, 2
JPEG_QUALITY = 90
# The reference crop settings (config.Config defaults), shared by the project and baseline (a).
AREA_RANGE, ASPECT_RANGE, MIN_COVERED = (0.08, 1.0), (0.75, 1.333), 0.1
SKIMAGE_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "stereo_motorcycle",
)


# ---------------------------------------------------------------------------------------------
# Data


def source_photos() -> list[np.ndarray]:
    """The RGB photographs shipped inside scikit-image and scikit-learn (nothing downloaded)."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = []
    for name in SKIMAGE_PHOTOS:
        image = getattr(skimage.data, name)()
        photos.append(image[0] if isinstance(image, tuple) else image)  # stereo: left view
    photos.extend(load_sample_images().images)  # china, flower
    return photos


def make_jpegs(count: int, seed: int = 0) -> list[tuple[bytes, int]]:
    """``count`` distinct ImageNet-like JPEGs with the index of their source photo as class.

    Each is a random crop (30-100% of the photo's area) resized to 500x375, a quarter of them
    portrait (375x500), half of them mirrored.
    """
    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(p) for p in source_photos()]
    out = []
    for i in range(count):
        label = i % len(photos)
        photo = photos[label]
        size = (375, 500) if rng.random() < 0.25 else (500, 375)
        aspect = size[0] / size[1]
        area = rng.uniform(0.3, 1.0) * photo.width * photo.height
        w = min(photo.width, int(np.sqrt(area * aspect)))
        h = min(photo.height, int(w / aspect))
        left = int(rng.integers(0, photo.width - w + 1))
        top = int(rng.integers(0, photo.height - h + 1))
        image = photo.crop((left, top, left + w, top + h)).resize(size, Image.BICUBIC)
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=JPEG_QUALITY)
        out.append((buffer.getvalue(), label))
    return out


def write_dataset(images: list[tuple[bytes, int]], out_dir: str) -> None:
    """The images as .jpg files (for Pillow) and as train and validation TFRecord shards."""
    jpeg_dir = os.path.join(out_dir, "jpeg")
    os.makedirs(jpeg_dir, exist_ok=True)
    examples = []
    for i, (jpeg, label) in enumerate(images):
        with open(os.path.join(jpeg_dir, f"{i:05d}.jpg"), "wb") as f:
            f.write(jpeg)
        width, height = Image.open(io.BytesIO(jpeg)).size
        examples.append(schema.to_example(jpeg, label + 1, height, width, filename=f"{i:05d}.jpg"))
    files = shards.write_split(examples, out_dir, "train", TRAIN_SHARDS)
    files.update(shards.write_split(examples, out_dir, "validation", EVAL_SHARDS))
    info.write_info(
        out_dir,
        {
            "num_classes": max(label for _, label in images) + 1,
            "label_offset": 1,
            "splits": {"train": len(examples), "validation": len(examples)},
            "files": files,
        },
    )


# ---------------------------------------------------------------------------------------------
# Pipelines


def with_threads(ds: tf.data.Dataset, threads: int) -> tf.data.Dataset:
    """Run the whole dataset on ``threads`` threads, one op at a time on each."""
    options = tf.data.Options()
    threading = compat.threading_options(options)
    threading.private_threadpool_size = threads
    threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


def textbook_normalize(image):
    """``(image - mean) / std`` as TF's official ResNet preprocessing writes it (not our own)."""
    return (tf.cast(image, tf.float32) - preprocess.MEAN_RGB) / preprocess.STDDEV_RGB


def minimal_train(jpegs: list[bytes]) -> tf.data.Dataset:
    """Baseline (a) for training: the textbook fused random crop over in-memory JPEG bytes."""
    whole_image = tf.constant([[[0.0, 0.0, 1.0, 1.0]]])

    def crop(jpeg):
        begin, size, _ = tf.image.sample_distorted_bounding_box(
            tf.image.extract_jpeg_shape(jpeg),
            bounding_boxes=whole_image,
            min_object_covered=MIN_COVERED,
            aspect_ratio_range=ASPECT_RANGE,
            area_range=AREA_RANGE,
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        window = tf.stack([begin[0], begin[1], size[0], size[1]])
        image = tf.image.decode_and_crop_jpeg(jpeg, window, channels=3)
        image = tf.image.resize(image, [IMAGE_SIZE, IMAGE_SIZE])
        return textbook_normalize(tf.image.random_flip_left_right(image))

    ds = tf.data.Dataset.from_tensor_slices(jpegs).repeat()
    ds = ds.map(crop, num_parallel_calls=tf.data.experimental.AUTOTUNE)
    return ds.batch(BATCH, drop_remainder=True).prefetch(tf.data.experimental.AUTOTUNE)


def minimal_eval(jpegs: list[bytes]) -> tf.data.Dataset:
    """Baseline (a) for evaluation: decode only the central window, then resize it to 224."""

    def center(jpeg):
        shape = tf.image.extract_jpeg_shape(jpeg)
        side = tf.cast(
            tf.cast(tf.minimum(shape[0], shape[1]), tf.float32) / preprocess.EVAL_RESIZE_RATIO,
            tf.int32,
        )
        window = tf.stack([(shape[0] - side) // 2, (shape[1] - side) // 2, side, side])
        image = tf.image.decode_and_crop_jpeg(jpeg, window, channels=3)
        return textbook_normalize(tf.image.resize(image, [IMAGE_SIZE, IMAGE_SIZE]))

    ds = tf.data.Dataset.from_tensor_slices(jpegs).repeat()
    ds = ds.map(center, num_parallel_calls=tf.data.experimental.AUTOTUNE)
    return ds.batch(BATCH, drop_remainder=True).prefetch(tf.data.experimental.AUTOTUNE)


def _project_config(data_dir: str, num_classes: int):
    settings = {"data_dir": data_dir, "class_num": num_classes, "batch_size": BATCH}
    return config.resolve(settings={**settings, "image_size": IMAGE_SIZE})


def project_train(data_dir: str, num_classes: int) -> tf.data.Dataset:
    c = _project_config(data_dir, num_classes)
    split = pipeline.load_split(c.input, "train")
    return pipeline.train_dataset(split, c.network, c.input, c.loop.seed)


def project_preprocessing(jpegs: list[bytes], data_dir: str, num_classes: int) -> tf.data.Dataset:
    """The project's per-image training work (crop sampler, decode, resize, flip, normalise)
    over the in-memory JPEGs of baseline (a): what is left of the gap to (a) is the reading,
    parsing and shuffling of records."""
    c = _project_config(data_dir, num_classes)
    no_boxes = tf.zeros([1, 0, 4])

    def image(index, jpeg):
        seed = tf.stack([index, tf.constant(c.loop.seed, tf.int64)])
        return preprocess.train_image(jpeg, no_boxes, seed, c.network, c.input)

    indices = tf.data.Dataset.range(2**62)
    ds = tf.data.Dataset.zip((indices, tf.data.Dataset.from_tensor_slices(jpegs).repeat()))
    ds = ds.map(image, num_parallel_calls=tf.data.experimental.AUTOTUNE)
    return ds.batch(BATCH, drop_remainder=True).prefetch(tf.data.experimental.AUTOTUNE)


def project_eval(data_dir: str, num_classes: int) -> tf.data.Dataset:
    c = _project_config(data_dir, num_classes)
    split = pipeline.load_split(c.input, "validation")
    # One pass is a few seconds of data: repeat it so the timing window never runs dry.
    return pipeline.eval_dataset(split, c.network, c.input, BATCH).repeat()


def tf_rate(ds: tf.data.Dataset, threads: int, seconds: float) -> tuple[float, float]:
    """(images per wall second, per CPU second) of a dataset of (images, labels) or images."""
    iterator = iter(with_threads(ds, threads))
    labelled = isinstance(ds.element_spec, tuple)

    def next_batch() -> int:
        batch = next(iterator)
        return int((batch[0] if labelled else batch).shape[0])

    return common.images_per_second(next_batch, seconds)


def pillow_rate(jpeg_dir: str, kind: str, processes: int, seconds: float) -> tuple[float, float]:
    """Baseline (b) in its own TensorFlow-free process (its workers are forked from it)."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.pillow_baseline", jpeg_dir]
        + ["--kind", kind, "--processes", str(processes), "--batch_size", str(BATCH)]
        + ["--seconds", str(seconds)],
        cwd=common.REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["images_per_second"], result["images_per_cpu_second"]


def _row(what: str, rates: tuple[float, float], project: tuple[float, float] | None = None):
    """A row of images/s; a baseline's row carries project/baseline, wall-clock and per CPU-s."""
    wall, cpu = rates
    return common.row(
        what,
        wall,
        "images/s",
        common.ratio(project[0], wall) if project else None,
        "project / this" if project else "",
        per_cpu_second=cpu,
        ratio_cpu=common.ratio(project[1], cpu) if project else None,
    )


# ---------------------------------------------------------------------------------------------


def run(quick: bool) -> dict:
    start = time.perf_counter()
    count, seconds, thread_counts = (64, 0.3, (1,)) if quick else (320, 4.0, (1, 2))
    images = make_jpegs(count)
    jpegs = [jpeg for jpeg, _ in images]
    num_classes = max(label for _, label in images) + 1
    rows, targets = [], []
    with tempfile.TemporaryDirectory(prefix="bench_input_") as data_dir:
        write_dataset(images, data_dir)
        jpeg_dir = os.path.join(data_dir, "jpeg")
        kinds = {
            "train": (project_train(data_dir, num_classes), minimal_train(jpegs)),
            "eval": (project_eval(data_dir, num_classes), minimal_eval(jpegs)),
        }
        cores = "-".join(map(str, thread_counts)) + " cores"
        for kind, (project_ds, minimal_ds) in kinds.items():
            vs_minimal, vs_pillow = [], []
            for n in thread_counts:
                # Interleaved, so that a burst of load on the shared machine hits all three.
                ours = tf_rate(project_ds, n, seconds)
                minimal = tf_rate(minimal_ds, n, seconds)
                pillow = pillow_rate(jpeg_dir, kind, n, seconds)
                threads = f"{n} thread{'s' if n > 1 else ''}"
                procs = f"{n} process{'es' if n > 1 else ''}"
                rows.append(_row(f"{kind}: project, {threads}", ours))
                rows.append(_row(f"{kind}: (a) minimal tf.data, {threads}", minimal, ours))
                rows.append(_row(f"{kind}: (b) Pillow/torchvision, {procs}", pillow, ours))
                vs_minimal.append(rows[-2]["ratio"])
                vs_pillow.append(rows[-1]["ratio"])  # n cores on both sides: a per-core ratio
                if kind == "train" and n == 1:
                    alone = tf_rate(project_preprocessing(jpegs, data_dir, num_classes), n, seconds)
                    rows.append(
                        common.row(
                            "train: project's per-image work alone, in-memory JPEGs, 1 thread",
                            alone[0],
                            "images/s",
                            common.ratio(alone[0], minimal[0]),
                            "this / (a)",
                            per_cpu_second=alone[1],
                            ratio_cpu=common.ratio(alone[1], minimal[1]),
                        )
                    )
            targets += [
                common.target(f"{kind} project/(a), worst of {cores}", min(vs_minimal), 0.95),
                common.target(
                    f"{kind} project/(b) per core, worst of {cores}", min(vs_pillow), 2.5
                ),
            ]
    return common.figure(
        NAME,
        "Figure 1: input pipeline, batches of 32 at 224 px from ~500x375 JPEGs (q90)",
        quick,
        time.perf_counter() - start,
        rows,
        targets,
        images=count,
    )


def main(argv: list[str] | None = None) -> int:
    args = common.parser(__doc__).parse_args(argv)
    return common.finish(NAME, run(args.quick), args.out)


if __name__ == "__main__":
    sys.exit(main())
