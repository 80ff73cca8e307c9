"""ImageNet-style image folders -> TF-slim TFRecord shards, dataset_info.json and labels.txt.

    python -m vgg_keras.data.convert SRC OUT [--train_shards 1024] [--validation_shards 128]
        [--workers N] [--val_labels FILE] [--synset_text FILE]

SRC holds ``train/<synset>/*.JPEG`` and ``val/<synset>/*.JPEG`` (files in sub-folders of a
``<synset>/`` count as that class's), or ``val/*.JPEG`` flat plus
``--val_labels`` (one synset per line in sorted-filename order, or ``filename synset`` lines).
Class k (1-based, TF-slim's convention) is the k-th synset of sorted ``train/`` folders.

Like TF-slim's ``build_imagenet_data.py``: training files are shuffled with a fixed seed before
being dealt into shards (so each shard mixes classes), validation stays in sorted order; RGB
and grayscale JPEGs keep their original bytes, PNG and CMYK files are re-encoded to RGB JPEG.
Unlike it, a file that cannot be decoded is listed in ``conversion_report.txt`` instead of
stopping the run, and the run is resumable: shards run in parallel processes, each written
under a temporary name, and a finished shard is kept when the converter runs again.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import random
import re
import signal
import sys
import threading

from tqdm import tqdm

from vgg_keras import atomic
from vgg_keras.compat import tf
from vgg_keras.data import info, pipeline, schema, shards
from vgg_keras.errors import EXIT_SIGINT, UsageError, reason, run_cli

SHUFFLE_SEED = 12345  # TF-slim's seed for the training file order
JPEG_QUALITY = 95
REPORT_FILE = "conversion_report.txt"
STATE_DIR = ".convert"  # per-shard sidecars: record counts and skipped files of finished shards
SOURCE_SPLITS = {"train": "train", "validation": "val"}

_SHARD_NAME = re.compile(r"^(train|validation)-\d{5}-of-(\d{5})$")


class BadImage(Exception):
    """A source file that cannot become a record; it is reported and skipped."""


@dataclasses.dataclass(frozen=True)
class Item:
    """One source image: its path relative to SRC and its class."""

    rel: str
    label: int
    synset: str
    text: str


@dataclasses.dataclass(frozen=True)
class ShardTask:
    """Everything a worker process needs to write one shard (paths, never pixels)."""

    src: str
    out: str
    name: str
    items: tuple[Item, ...]

    @property
    def fingerprint(self) -> str:
        """Identifies the shard's intended content, so a kept shard is known to match SRC."""
        lines = (f"{i.rel}\t{i.label}\t{i.synset}\t{i.text}" for i in self.items)
        return hashlib.sha1("\n".join(lines).encode()).hexdigest()

    @property
    def state_path(self) -> str:
        return os.path.join(self.out, STATE_DIR, self.name + ".json")


@dataclasses.dataclass(frozen=True)
class ShardResult:
    name: str
    records: int
    skipped: tuple[tuple[str, str], ...]  # (rel path, reason)
    reencoded: tuple[tuple[str, str], ...]  # (rel path, what it was)


# ---------------------------------------------------------------- images


def jpeg_components(data: bytes) -> int | None:
    """Colour components from a JPEG's frame header (4 = CMYK/YCCK); None if it is not one.

    ``tf.io.extract_jpeg_shape`` reads only the header and reports CMYK as 4 (checked on TF
    2.21).  The start-of-image test first keeps libjpeg's "Not a JPEG file" line, which it
    prints on stderr, out of the converter's output for PNG and other files.
    """
    if data[:2] != b"\xff\xd8":
        return None
    try:
        return int(tf.io.extract_jpeg_shape(data)[2])
    except tf.errors.OpError:
        return None


def encode_image(data: bytes) -> tuple[bytes, int, int, int, str, str]:
    """(jpeg, height, width, channels, colorspace, re-encoded from) for one file's bytes.

    RGB/grayscale JPEGs keep their bytes (decoded once to prove TF can read them); anything
    else TF decodes (CMYK JPEG, PNG, GIF, BMP) becomes an RGB JPEG, because the training
    pipeline's ``decode_and_crop_jpeg`` reads JPEG only and not every decoder reads CMYK.
    Raises BadImage when TF cannot decode the bytes.
    """
    components = jpeg_components(data)
    try:
        if components in (1, 3):
            shape = tf.io.decode_jpeg(data).shape
            colorspace = "RGB" if components == 3 else "Grayscale"
            return data, shape[0], shape[1], components, colorspace, ""
        if components is not None:
            pixels = tf.io.decode_jpeg(data, channels=3)
            source = "CMYK JPEG" if components == 4 else f"{components}-component JPEG"
        else:
            source = _format_name(data)
            pixels = tf.io.decode_image(data, channels=3, expand_animations=False)
        jpeg = tf.io.encode_jpeg(pixels, quality=JPEG_QUALITY).numpy()
    except tf.errors.OpError as err:
        if source == "non-JPEG" and data[:2] != b"\xff\xd8":  # TF 1.15 words this differently
            raise BadImage("Unknown image file format") from err
        raise BadImage(reason(err)) from err
    return jpeg, pixels.shape[0], pixels.shape[1], 3, "RGB", source


def _format_name(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "PNG"
    if data.startswith(b"GIF8"):
        return "GIF"
    if data.startswith(b"BM"):
        return "BMP"
    return "non-JPEG"


# ---------------------------------------------------------------- shards


def convert_shard(task: ShardTask) -> ShardResult:
    """Write one shard (via ``.tmp``, then rename) and its sidecar; runs in a worker process."""
    skipped, reencoded = [], []

    def examples():
        for item in task.items:
            path = os.path.join(task.src, item.rel)
            try:
                with open(path, "rb") as f:
                    data = f.read()
                jpeg, height, width, channels, colorspace, source = encode_image(data)
            except OSError as err:
                skipped.append((item.rel, err.strerror or str(err)))
                continue
            except BadImage as err:
                skipped.append((item.rel, str(err)))
                continue
            if source:
                reencoded.append((item.rel, source))
            yield schema.to_example(
                jpeg,
                item.label,
                height,
                width,
                synset=item.synset,
                text=item.text,
                filename=os.path.basename(item.rel),
                channels=channels,
                colorspace=colorspace,
            )

    path = os.path.join(task.out, task.name)
    try:
        records = shards.write_shard(path, examples())
        result = ShardResult(task.name, records, tuple(skipped), tuple(reencoded))
        state = {"fingerprint": task.fingerprint, **dataclasses.asdict(result)}
        atomic.write_text(task.state_path, json.dumps(state))
    except (OSError, tf.errors.OpError) as err:
        why = err.strerror if isinstance(err, OSError) else reason(err)
        raise UsageError(f"{path}: cannot write shard ({why})") from err
    return result


def kept_shard(task: ShardTask) -> ShardResult | None:
    """The result of an earlier run's shard if it is finished and was made from the same files.

    A shard without its sidecar (the run died between the two renames), or whose records cannot
    all be read back, is written again.
    """
    if not os.path.exists(os.path.join(task.out, task.name)):
        return None
    try:
        with open(task.state_path) as f:
            state = json.load(f)
    except (OSError, ValueError):
        return None
    if state.get("fingerprint") != task.fingerprint:
        return None
    # A shard damaged since (truncated, bit rot) is written again: read it all, CRCs checked.
    try:
        if pipeline.count_records(os.path.join(task.out, task.name)) != int(state["records"]):
            return None
    except UsageError:
        return None
    return ShardResult(
        task.name,
        int(state["records"]),
        tuple(tuple(row) for row in state["skipped"]),
        tuple(tuple(row) for row in state["reencoded"]),
    )


def plan_shards(
    src: str, out: str, split: str, items: list[Item], num_shards: int
) -> list[ShardTask]:
    """Deal ``items`` into ``num_shards`` contiguous runs, training items shuffled first."""
    if split == "train":
        items = list(items)
        random.Random(SHUFFLE_SEED).shuffle(items)
    bounds = [len(items) * k // num_shards for k in range(num_shards + 1)]
    return [
        ShardTask(src, out, schema.shard_name(split, k, num_shards), tuple(items[a:b]))
        for k, (a, b) in enumerate(zip(bounds, bounds[1:]))
    ]


def _init_worker() -> None:
    # One thread per process: the pool already uses every core.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    # Pool.terminate() sends SIGTERM: leave through the finally clauses, which remove the
    # staging folder of a half-written shard.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _exit_on_sigterm(signum, _frame) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _sigint_ignored():
    """SIGINT ignored while worker processes are spawned (milliseconds: a Ctrl-C then is lost).
    They inherit that (an ignored signal stays ignored through exec), so Ctrl-C, which the
    terminal sends to the whole process group, reaches only this process, which stops them,
    instead of printing a traceback from each worker's import of TensorFlow."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)


def run_tasks(tasks: list[ShardTask], workers: int, progress: bool) -> list[ShardResult]:
    """Keep finished shards, write the others over ``workers`` processes, one bar over shards."""
    results, todo = [], []
    for task in tasks:
        kept = kept_shard(task)
        if kept is None:
            todo.append(task)
        else:
            results.append(kept)
    bar = tqdm(
        total=len(tasks), initial=len(results), unit="shard", desc="convert", disable=not progress
    )
    try:
        if workers <= 1 or len(todo) <= 1:
            for task in todo:
                results.append(convert_shard(task))
                bar.update()
            return results
        # spawn: a forked child would inherit TensorFlow's threads in an undefined state.
        # multiprocessing.Pool rather than ProcessPoolExecutor: its terminate() stops the workers
        # at once, where the executor's thread prints tracebacks when its workers are killed.
        context, pool = multiprocessing.get_context("spawn"), None
        try:
            with _sigint_ignored():  # the workers start ignoring Ctrl-C
                pool = context.Pool(min(workers, len(todo)), initializer=_init_worker)
            for result in pool.imap_unordered(convert_shard, todo):
                results.append(result)
                bar.update()
        except BaseException:
            if pool is not None:
                pool.terminate()  # a half-written shard is discarded, written by a re-run
            raise
        else:
            pool.close()
        finally:
            if pool is not None:
                pool.join()
        return results
    finally:
        bar.close()


# ---------------------------------------------------------------- source folders


def _entries(folder: str) -> tuple[list[str], list[str]]:
    """(sorted sub-folder names, sorted file names) of ``folder``, hidden entries left out."""
    dirs, files = [], []
    with os.scandir(folder) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                dirs.append(entry.name)
            elif entry.is_file():
                files.append(entry.name)
    return sorted(dirs), sorted(files)


def _files_under(folder: str) -> list[str]:
    """Sorted paths relative to ``folder`` of the files in it and in its sub-folders (ImageNet
    style trees sometimes nest), hidden entries left out."""
    dirs, files = _entries(folder)
    nested = [f"{d}/{name}" for d in dirs for name in _files_under(os.path.join(folder, d))]
    return sorted(files + nested)


def read_synset_text(path: str) -> dict[str, str]:
    """``n01440764<TAB>tench, Tinca tinca`` lines -> {synset: text}."""
    texts = {}
    for line in _read_lines(path):
        synset, sep, text = line.partition("\t")
        if not sep:
            synset, _, text = line.partition(" ")
        texts[synset.strip()] = text.strip()
    return texts


def read_val_labels(path: str, filenames: list[str]) -> list[str]:
    """Synsets of the sorted flat ``filenames`` from a labels file.

    One synset per line (in sorted-filename order), or ``filename synset`` per line, with the
    filename with or without extension (LOC_val_solution.csv style rows also work).
    """
    rows = [re.split(r"[\s,]+", line.strip()) for line in _read_lines(path)]
    rows = [r for r in rows if r != [""] and r[0] != "ImageId"]  # LOC_val_solution.csv header
    if rows and all(len(r) == 1 for r in rows):
        if len(rows) != len(filenames):
            raise UsageError(f"{path}: {len(rows)} labels for {len(filenames)} images")
        return [r[0] for r in rows]
    by_name = {}
    for number, row in enumerate(rows, 1):
        if len(row) < 2:
            raise UsageError(f"{path}: row {number} has no synset after the filename")
        by_name[os.path.splitext(row[0])[0]] = row[1]
    labels = []
    for name in filenames:
        synset = by_name.get(name, by_name.get(os.path.splitext(name)[0]))
        if synset is None:
            raise UsageError(f"{path}: no label for {name}")
        labels.append(synset)
    return labels


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f if line.strip()]
    except OSError as err:
        raise UsageError(f"{path}: cannot read ({err.strerror})") from err


def scan_source(
    src: str, val_labels: str | None = None, synset_text: str | None = None
) -> tuple[list[str], list[str], dict[str, list[Item]]]:
    """(synsets, texts, {split: items}) of an ImageNet-style folder; UsageError if malformed."""
    if not os.path.isdir(src):
        raise UsageError(f"source folder not found: {src}")
    folders = {
        split: os.path.join(src, name)
        for split, name in SOURCE_SPLITS.items()
        if os.path.isdir(os.path.join(src, name))
    }
    if not folders:
        raise UsageError(f"{src}: no train/ or val/ folder")
    if val_labels and "validation" not in folders:
        raise UsageError(f"{src}: no val/ folder for --val_labels {val_labels}")
    names = {split: _entries(folder) for split, folder in folders.items()}  # (dirs, files)
    class_split = "train" if "train" in folders else "validation"
    synsets = names[class_split][0]
    if class_split == "validation" and val_labels:
        flat = names["validation"][1]
        synsets = sorted(set(read_val_labels(val_labels, flat)))
    if not synsets:
        raise UsageError(
            f"{folders[class_split]}: no class folders (expected <synset>/ folders of images)"
        )
    known = read_synset_text(synset_text) if synset_text else {}
    texts = [known.get(s, s) for s in synsets]
    label_of = {s: k + 1 for k, s in enumerate(synsets)}

    def item(rel: str, synset: str, where: str) -> Item:
        if synset not in label_of:
            raise UsageError(f"{where}: synset {synset} is not a class of {folders[class_split]}")
        return Item(rel, label_of[synset], synset, texts[label_of[synset] - 1])

    items = {}
    for split, folder in folders.items():
        sub, flat = names[split]
        base = SOURCE_SPLITS[split]
        if split == "validation" and val_labels:
            labels = read_val_labels(val_labels, flat)
            items[split] = [
                item(f"{base}/{name}", synset, val_labels) for name, synset in zip(flat, labels)
            ]
        elif not sub:
            hint = "; pass --val_labels FILE for a flat val/ folder" if flat else ""
            raise UsageError(f"{folder}: no class folders{hint}")
        else:
            items[split] = [
                item(f"{base}/{synset}/{name}", synset, os.path.join(folder, synset))
                for synset in sub
                for name in _files_under(os.path.join(folder, synset))
            ]
        if not items[split]:
            raise UsageError(f"{folder}: no image files")
    return synsets, texts, items


# ---------------------------------------------------------------- the conversion


def _check_output(out: str, num_shards: dict[str, int]) -> None:
    """Refuse an output folder holding shards of another shard count: readers would mix them."""
    try:
        os.makedirs(os.path.join(out, STATE_DIR), exist_ok=True)
    except OSError as err:
        raise UsageError(f"{out}: cannot create output folder ({err.strerror})") from err
    for name in sorted(os.listdir(out)):
        match = _SHARD_NAME.match(name)
        if match and int(match.group(2)) != num_shards.get(match.group(1)):
            raise UsageError(
                f"{os.path.join(out, name)}: shard of another conversion; "
                "use an empty output folder or the same shard counts"
            )


def convert(
    src: str,
    out: str,
    *,
    train_shards: int = 1024,
    validation_shards: int = 128,
    workers: int | None = None,
    val_labels: str | None = None,
    synset_text: str | None = None,
    progress: bool = True,
) -> dict:
    """Convert ``src`` into shards in ``out``; returns the dataset info that was written.

    Also writes ``conversion_report.txt`` (skipped and re-encoded files) and prints a summary
    line on stderr when files were skipped.  Shards finished by an earlier run are kept.
    """
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    synsets, texts, items = scan_source(src, val_labels, synset_text)
    requested = {"train": train_shards, "validation": validation_shards}
    num_shards = {split: requested[split] for split in items}
    for split, count in num_shards.items():
        flag = f"--{split}_shards"
        if count < 1:
            raise UsageError(f"{flag} must be at least 1, got {count}")
        if count > len(items[split]):
            raise UsageError(
                f"{flag} {count} is more than the {len(items[split])} images in "
                f"{os.path.join(src, SOURCE_SPLITS[split])}"
            )
    _check_output(out, num_shards)
    tasks = [
        task
        for split in items
        for task in plan_shards(src, out, split, items[split], num_shards[split])
    ]
    results = sorted(run_tasks(tasks, workers, progress), key=lambda r: r.name)
    files = {r.name: r.records for r in results}
    result = {
        "name": os.path.basename(os.path.abspath(src)),
        "num_classes": len(synsets),
        "label_offset": 1,
        "splits": {
            split: sum(
                n for name, n in files.items() if name.startswith(schema.SPLIT_PREFIXES[split])
            )
            for split in items
        },
        "synsets": synsets,
        "texts": texts,
        "files": files,
    }
    info.write_info(out, result)
    skipped = sorted(row for r in results for row in r.skipped)
    reencoded = sorted(row for r in results for row in r.reencoded)
    _write_report(out, src, skipped, reencoded)
    if skipped:
        print(
            f"convert: skipped {len(skipped)} unreadable file(s) of {src}, listed in "
            f"{os.path.join(out, REPORT_FILE)}",
            file=sys.stderr,
        )
    return result


def _write_report(out: str, src: str, skipped, reencoded) -> None:
    lines = [f"# conversion of {src}: {len(skipped)} skipped, {len(reencoded)} re-encoded"]
    lines += [f"skipped\t{os.path.join(src, rel)}\t{why}" for rel, why in skipped]
    lines += [
        f"re-encoded\t{os.path.join(src, rel)}\t{what} -> RGB JPEG" for rel, what in reencoded
    ]
    with open(os.path.join(out, REPORT_FILE), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vgg_keras.data.convert",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("src", help="folder with train/<synset>/* and val/<synset>/* (or val/*)")
    parser.add_argument("out", help="output folder for the shards and dataset_info.json")
    parser.add_argument("--train_shards", type=int, default=1024)
    parser.add_argument("--validation_shards", type=int, default=128)
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all CPUs)"
    )
    parser.add_argument(
        "--val_labels",
        help="labels for a flat val/ folder: one synset per line in sorted-filename order, "
        "or 'filename synset' lines",
    )
    parser.add_argument(
        "--synset_text", help="lines 'n01440764<TAB>tench, Tinca tinca' for image/class/text"
    )
    args = parser.parse_args(argv)
    try:
        result = convert(
            args.src,
            args.out,
            train_shards=args.train_shards,
            validation_shards=args.validation_shards,
            workers=args.workers,
            val_labels=args.val_labels,
            synset_text=args.synset_text,
        )
    except KeyboardInterrupt:
        print("interrupted: finished shards are kept; run again to resume", file=sys.stderr)
        return EXIT_SIGINT
    print(
        f"{args.out}: {result['num_classes']} classes, {result['splits']} records "
        f"in {len(result['files'])} shards"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
