"""Figure 1's baseline (b): torchvision's ImageNet transforms done with Pillow and NumPy.

Train: ``RandomResizedCrop(224) + RandomHorizontalFlip() + ToTensor() + Normalize(mean, std)``;
eval: ``Resize(256) + CenterCrop(224) + ToTensor() + Normalize``, the transforms of torchvision's
``references/classification``, in N worker processes that each build whole batches, as a
``DataLoader(num_workers=N)`` does.  Batches are not sent back to the parent (a DataLoader
would), which favours this baseline.

It runs as its own process (``python -m bench.pillow_baseline DIR --kind train --processes 2``)
without TensorFlow, so its forked workers start from a clean interpreter.
"""

from __future__ import annotations

import argparse
import collections
import glob
import io
import json
import math
import multiprocessing
import os
import random
import time

import numpy as np
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)


def random_resized_crop_params(
    width: int,
    height: int,
    rng: random.Random,
    scale=(0.08, 1.0),
    ratio=(3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(top, left, height, width) exactly as ``RandomResizedCrop.get_params`` draws them."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height  # fallback: the central crop of the allowed aspect ratios
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _to_normalized_chw(image: Image.Image) -> np.ndarray:
    """``ToTensor()`` then ``Normalize(MEAN, STD)``, step for step as torch runs them.

    ToTensor permutes HWC to a contiguous CHW copy, converts to float and divides by 255;
    Normalize subtracts and divides in place.  (Out-of-place NumPy broadcasting would be 5x
    slower and flatter our pipeline.)
    """
    chw = np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1)).astype(np.float32)
    chw /= 255.0
    chw -= MEAN
    chw /= STD
    return chw


def _open_rgb(jpeg: bytes) -> Image.Image:
    # torchvision's default loader: Image.open(f).convert("RGB"), which decodes the whole JPEG.
    return Image.open(io.BytesIO(jpeg)).convert("RGB")


def train_transform(jpeg: bytes, rng: random.Random, size: int = 224) -> np.ndarray:
    image = _open_rgb(jpeg)
    top, left, h, w = random_resized_crop_params(image.width, image.height, rng)
    image = image.crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR)
    if rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return _to_normalized_chw(image)


def eval_transform(jpeg: bytes, size: int = 224) -> np.ndarray:
    image = _open_rgb(jpeg)
    short = round(size * 256 / 224)
    scale = short / min(image.width, image.height)
    image = image.resize(
        (max(short, int(image.width * scale)), max(short, int(image.height * scale))),
        Image.BILINEAR,
    )
    left, top = round((image.width - size) / 2), round((image.height - size) / 2)
    image = image.crop((left, top, left + size, top + size))
    return _to_normalized_chw(image)


_JPEGS: list[bytes] = []


def _load(jpegs: list[bytes]) -> None:
    _JPEGS[:] = jpegs


def _batch(task: tuple[str, int, int, int]) -> tuple[int, float]:
    """Build one batch in a worker; returns its image count and the CPU seconds it took."""
    start = time.process_time()
    kind, first, batch_size, seed = task
    rng = random.Random(seed)
    indices = [(first + i) % len(_JPEGS) for i in range(batch_size)]
    if kind == "train":
        images = [train_transform(_JPEGS[i], rng) for i in indices]
    else:
        images = [eval_transform(_JPEGS[i]) for i in indices]
    return len(np.stack(images)), time.process_time() - start


def images_per_second(
    jpegs: list[bytes], kind: str, processes: int, batch_size: int, seconds: float
) -> tuple[float, float]:
    """(images per wall second, per CPU second) of ``processes`` workers building batches.

    Two batches stay queued per worker, so no worker waits for the parent.
    """
    context = multiprocessing.get_context("fork")
    with context.Pool(processes, initializer=_load, initargs=(jpegs,)) as pool:
        tasks = iter(range(1 << 30))

        def submit():
            i = next(tasks)
            return pool.apply_async(_batch, ((kind, i * batch_size, batch_size, i),))

        pool.map(_batch, [(kind, 0, batch_size, -1 - p) for p in range(processes)])  # warm-up
        pending = collections.deque(submit() for _ in range(2 * processes))
        images, cpu, start = 0, 0.0, time.perf_counter()
        while pending:
            n, cost = pending.popleft().get()
            images, cpu = images + n, cpu + cost
            if time.perf_counter() - start < seconds:
                pending.append(submit())
        return images / (time.perf_counter() - start), images / cpu


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("jpeg_dir", help="folder of .jpg files")
    p.add_argument("--kind", choices=("train", "eval"), default="train")
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--seconds", type=float, default=4.0)
    args = p.parse_args(argv)
    jpegs = []
    for path in sorted(glob.glob(os.path.join(args.jpeg_dir, "*.jpg"))):
        with open(path, "rb") as f:
            jpegs.append(f.read())
    wall, cpu = images_per_second(jpegs, args.kind, args.processes, args.batch_size, args.seconds)
    print(json.dumps({"images_per_second": wall, "images_per_cpu_second": cpu}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
