"""Image folders -> TF-slim TFRecord shards, dataset_info.json, labels.txt and a report.

    python -m vgg_keras.data.convert SRC OUT [--train_shards N] [--validation_shards N]
        [--workers N] [--val_labels FILE] [--synset_text FILE] [--val_fraction F]
        [--split_seed S]

SRC holds ``train/<synset>/*`` and ``val/<synset>/*`` (files in sub-folders of a ``<synset>/``
count as that class's), or ``val/*`` flat plus ``--val_labels`` (one synset per line in
sorted-filename order, or ``filename synset`` lines), or only ``<class>/*`` folders (one folder
of classes; ``--val_fraction`` sets a part of each class aside for validation).  Class k
(1-based, TF-slim's convention) is the k-th of the sorted class folders.  docs/data.md has the
details.

Like TF-slim's ``build_imagenet_data.py``: training files are shuffled with a fixed seed before
being dealt into shards (so each shard mixes classes), validation stays in sorted order; RGB
and grayscale JPEGs keep their original bytes, PNG and CMYK files are re-encoded to RGB JPEG.
Unlike it, a file that cannot be decoded is listed in ``conversion_report.txt`` instead of
stopping the run, as is whatever the scan of SRC leaves out (files beside the class folders,
dangling symlinks, symlink loops); shard counts follow the number of images; and the run is
resumable: shards run in parallel processes, each written under a temporary name, and a
finished shard is kept when the converter runs again.

The module imports TensorFlow only inside the functions that use it, so that the command parses
its flags and installs its signal handlers first: ``--help`` answers at once, and a Ctrl-C or
SIGTERM while TensorFlow loads (seconds) ends in the same one line as one during the conversion.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import errno
import hashlib
import json
import math
import multiprocessing
import os
import random
import re
import signal
import sys
import threading

from tqdm import tqdm

from vgg_keras import atomic, cores, documents, storage
from vgg_keras.cli import UsageParser  # errors become one line and exit code 2
from vgg_keras.data import info
from vgg_keras.errors import UsageError, reason, run_cli
from vgg_keras.signals import STOP, exit_code

SHUFFLE_SEED = 12345  # TF-slim's seed for the training file order
SPLIT_SEED = 0  # --split_seed's default
# TF-slim wrote ImageNet's 1,281,167 training images into 1,024 shards: ~1,250 per shard.
IMAGES_PER_SHARD = 1250
JPEG_QUALITY = 95
REPORT_FILE = info.REPORT_FILE
SOURCE_SPLITS = {"train": "train", "validation": "val"}
INTERRUPTED = "interrupted: finished shards are kept; run again to resume"

# Why the scan of SRC left something out (report rows: kind, path, why).
LOOP = "symlink loop: a folder inside itself"
DANGLING = "dangling symlink: its target does not exist"
LOOSE = "not in a class folder"
NOT_UTF8 = "file name is not UTF-8: image/filename holds it with U+FFFD for the bad bytes"


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
        # surrogateescape: a file name that is not UTF-8 is hashed as its bytes
        return hashlib.sha1("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()

    @property
    def state_path(self) -> str:
        return os.path.join(self.out, info.STATE_DIR, self.name + ".json")


@dataclasses.dataclass(frozen=True)
class ShardResult:
    name: str
    records: int
    skipped: tuple[tuple[str, str], ...]  # (rel path, reason)
    reencoded: tuple[tuple[str, str], ...]  # (rel path, what it was)


@dataclasses.dataclass
class Source:
    """What the scan of SRC found: the classes, the images of each split, what it left out."""

    synsets: list[str]
    texts: list[str]
    items: dict[str, list[Item]]  # split -> images, in sorted order
    folders: dict[str, str]  # split -> the folder (relative to SRC) its images come from
    notes: list[tuple[str, str, str]]  # (kind, rel path, why) for the report
    val_split: dict | None = None  # how --val_fraction made the validation split


def shown(path: str) -> str:
    """``path`` for a message: bytes that are not UTF-8 as ``\\xff`` escapes."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _is_utf8(name: str) -> bool:
    # os.listdir gives undecodable bytes as lone surrogates, which shown() escapes
    return shown(name) == name


# ---------------------------------------------------------------- images


def jpeg_components(data: bytes) -> int | None:
    """Colour components from a JPEG's frame header (4 = CMYK/YCCK); None if it is not one.

    ``tf.io.extract_jpeg_shape`` reads only the header and reports CMYK as 4 (checked on TF
    2.21).  The start-of-image test first saves the call for PNG and other files.
    """
    if data[:2] != b"\xff\xd8":
        return None
    from vgg_keras import compat

    try:
        # libjpeg writes its complaints about damaged bytes ("Improper call to JPEG library in
        # state 201", "Premature end of JPEG data") straight to file descriptor 2, where they
        # would bury our one-line messages; the reason reaches the user as a BadImage instead.
        with compat.native_stderr_silenced(True):
            return int(compat.tf.io.extract_jpeg_shape(data)[2])
    except compat.tf.errors.OpError:
        return None


def encode_image(data: bytes) -> tuple[bytes, int, int, int, str, str]:
    """(jpeg, height, width, channels, colorspace, re-encoded from) for one file's bytes.

    RGB/grayscale JPEGs keep their bytes (decoded once to prove TF can read them); anything
    else TF decodes (CMYK JPEG, PNG, GIF, BMP) becomes an RGB JPEG, because the training
    pipeline's ``decode_and_crop_jpeg`` reads JPEG only and not every decoder reads CMYK.
    Raises BadImage when TF cannot decode the bytes.
    """
    from vgg_keras import compat
    from vgg_keras.compat import tf

    components = jpeg_components(data)
    magic = {b"\x89PNG": "PNG", b"GIF8": "GIF", b"BM": "BMP"}
    found = (name for m, name in magic.items() if data.startswith(m))
    source = "JPEG" if components is not None else next(found, "non-JPEG")
    try:
        with compat.native_stderr_silenced(True):  # libjpeg's complaints: see jpeg_components
            if components in (1, 3):
                shape = tf.io.decode_jpeg(data).shape
                colorspace = "RGB" if components == 3 else "Grayscale"
                return data, shape[0], shape[1], components, colorspace, ""
            if components is not None:
                pixels = tf.io.decode_jpeg(data, channels=3)
                source = "CMYK JPEG" if components == 4 else f"{components}-component JPEG"
            else:
                pixels = tf.io.decode_image(data, channels=3, expand_animations=False)
            jpeg = tf.io.encode_jpeg(pixels, quality=JPEG_QUALITY).numpy()
    except tf.errors.OpError as err:
        if source == "non-JPEG" and data[:2] != b"\xff\xd8":  # TF 1.15 words this differently
            raise BadImage("Unknown image file format") from err
        raise BadImage(reason(err)) from err
    return jpeg, pixels.shape[0], pixels.shape[1], 3, "RGB", source


# ---------------------------------------------------------------- shards


def convert_shard(task: ShardTask) -> ShardResult:
    """Write one shard (via ``.tmp``, then rename) and its sidecar; runs in a worker process."""
    from vgg_keras.compat import tf
    from vgg_keras.data import schema, shards

    skipped, reencoded = [], []

    def examples():
        for item in task.items:
            path = os.path.join(task.src, item.rel)
            try:
                with open(path, "rb") as f:
                    data = f.read()
                jpeg, height, width, channels, colorspace, source = encode_image(data)
            except (OSError, BadImage) as err:  # an OSError by the OS's reason
                skipped.append((item.rel, getattr(err, "strerror", None) or str(err)))
                continue
            if source:
                reencoded.append((item.rel, source))
            name = os.path.basename(item.rel).encode("utf-8", "surrogateescape")
            yield schema.to_example(
                jpeg,
                item.label,
                height,
                width,
                synset=item.synset,
                text=item.text,
                filename=name.decode("utf-8", "replace"),
                channels=channels,
                colorspace=colorspace,
            )

    path = os.path.join(task.out, task.name)
    try:
        records = shards.write_shard(path, examples())
        result = ShardResult(task.name, records, tuple(skipped), tuple(reencoded))
        state = {"fingerprint": task.fingerprint, **dataclasses.asdict(result)}
        state["bytes"] = storage.getsize(path)
        atomic.write_text(task.state_path, json.dumps(state))
    except (OSError, tf.errors.OpError) as err:
        raise UsageError(f"{path}: cannot write shard ({reason(err)})") from err
    return result


def kept_shard(task: ShardTask) -> ShardResult | None:
    """The result of an earlier run's shard if it is finished, was made from the same files and
    has the size it was written with; else None (written again).  A shard without its sidecar
    (the run died between the two renames) is written again too.
    """
    path = os.path.join(task.out, task.name)
    try:
        state = documents.read_json(task.state_path, "shard state")
    except UsageError:
        return None
    same = storage.exists(path) and storage.getsize(path) == state.get("bytes")
    if not same or state.get("fingerprint") != task.fingerprint:  # read_json: a dict, or {}
        return None
    rows = {key: tuple(map(tuple, state[key])) for key in ("skipped", "reencoded")}
    return ShardResult(task.name, int(state["records"]), **rows)


def shard_count(images: int) -> int:
    """Shards for a split of ``images`` files when no count is given: the power of two nearest
    ``images / IMAGES_PER_SHARD``, at least 1 (so never more shards than images).

    ImageNet's 1,281,167 training images get TF-slim's 1,024; a few thousand images get 1 or 2.
    """
    return 2 ** max(0, round(math.log2(max(images, 1) / IMAGES_PER_SHARD)))


def plan_shards(
    src: str, out: str, split: str, items: list[Item], num_shards: int
) -> list[ShardTask]:
    """Deal ``items`` into ``num_shards`` contiguous runs, training items shuffled first."""
    from vgg_keras.data import schema

    if split == "train":
        items = list(items)
        random.Random(SHUFFLE_SEED).shuffle(items)
    bounds = [len(items) * k // num_shards for k in range(num_shards + 1)]
    return [
        ShardTask(src, out, schema.shard_name(split, k, num_shards), tuple(items[a:b]))
        for k, (a, b) in enumerate(zip(bounds, bounds[1:]))
    ]


def _init_worker() -> None:
    from vgg_keras.compat import tf

    # One thread per process: the pool already uses every core.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    # Pool.terminate() sends SIGTERM: leave through the finally clauses, which remove the
    # staging folder of a half-written shard.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(exit_code(signum)))


@contextlib.contextmanager
def _handling(signums, handler):
    """``handler`` for ``signums`` inside, the previous handlers after (in the main thread:
    Python lets no other thread set one)."""
    in_main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, handler) for sig in signums if in_main}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_tasks(todo: list[ShardTask], workers: int, bar: tqdm) -> list[ShardResult]:
    """Write the shards of ``todo`` over ``workers`` processes, advancing ``bar`` by the images
    of each finished shard."""
    sizes = {task.name: len(task.items) for task in todo}
    pool, results = None, []
    try:
        if workers > 1 and len(todo) > 1:
            # spawn: a forked child would inherit TensorFlow's threads in an undefined state.
            # multiprocessing.Pool rather than ProcessPoolExecutor: its terminate() stops the
            # workers at once, where the executor's thread prints tracebacks when they are killed.
            # SIGINT ignored while the workers are spawned (milliseconds: a Ctrl-C then is lost).
            # They inherit that (an ignored signal stays ignored through exec), so Ctrl-C, which
            # the terminal sends to the whole process group, reaches only this process, which
            # stops them, instead of printing a traceback from each worker's import of TensorFlow.
            with _handling([signal.SIGINT], signal.SIG_IGN):
                context = multiprocessing.get_context("spawn")
                pool = context.Pool(min(workers, len(todo)), initializer=_init_worker)
        finished = pool.imap_unordered(convert_shard, todo) if pool else map(convert_shard, todo)
        for result in finished:
            results.append(result)
            bar.update(sizes[result.name])
        if pool is not None:
            pool.close()
    except BaseException:
        if pool is not None:
            pool.terminate()  # a half-written shard is discarded, written by a re-run
            pool.join()
        # A worker stopped inside its own cleanup leaves its staging folder: none survives.
        for task in todo:
            atomic.discard_staging(os.path.join(task.out, task.name))
            atomic.discard_staging(task.state_path)
        raise
    finally:
        if pool is not None:
            pool.join()
    return results


# ---------------------------------------------------------------- source folders


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def _where(src: str, rel: str) -> str:
    """SRC/rel for a message (SRC itself for the single-folder layout's "")."""
    return shown(os.path.join(src, rel) if rel else src)


class _Scan:
    """One listing of SRC.  Symlinks are followed; what the listing leaves out (hidden entries
    aside) is noted for the report: dangling symlinks, symlink loops, the output folder."""

    def __init__(self, src: str, out: str):
        self.src = src
        self.out = storage.realpath(out)
        self.notes: list[tuple[str, str, str]] = []
        self._listed: dict[str, tuple[list[str], list[str]]] = {}

    def note(self, kind: str, rel: str, why: str) -> None:
        self.notes.append((kind, rel, why))

    def real(self, rel: str) -> str:
        return os.path.realpath(os.path.join(self.src, rel))

    def entries(self, rel: str) -> tuple[list[str], list[str]]:
        """(sorted sub-folder names, sorted file names) of SRC/rel, listed once."""
        if rel in self._listed:
            return self._listed[rel]
        folder = os.path.join(self.src, rel)
        try:
            with os.scandir(folder) as it:
                listed = sorted(it, key=lambda e: e.name)
        except OSError as err:
            raise UsageError(f"{shown(folder)}: cannot read folder ({err.strerror})") from err
        dirs, files = [], []
        for entry in listed:
            if entry.name.startswith("."):
                continue
            path = _join(rel, entry.name)
            try:
                if entry.is_dir():
                    if self.real(path) == self.out:
                        self.note("ignored", path, "the output folder")
                    else:
                        dirs.append(entry.name)
                elif entry.is_file():
                    files.append(entry.name)
                elif entry.is_symlink():
                    self.note("skipped", path, DANGLING)
                else:
                    self.note("ignored", path, "not a file or folder")
            except OSError as err:  # a symlink that points to itself, or no permission
                why = LOOP if err.errno == errno.ELOOP else f"cannot read ({err.strerror})"
                self.note("skipped", path, why)
        self._listed[rel] = dirs, files
        return dirs, files

    def files_under(self, rel: str, ancestors: frozenset = frozenset()) -> list[str]:
        """Sorted paths (relative to SRC) of the files in SRC/rel and its sub-folders (ImageNet
        style trees sometimes nest); a folder that is one of its own ancestors is a loop."""
        ancestors = ancestors | {self.real(rel)}
        dirs, files = self.entries(rel)
        found = [_join(rel, name) for name in files]
        for path in found:  # this folder's own: a sub-folder notes its files itself
            if not _is_utf8(os.path.basename(path)):
                self.note("note", path, NOT_UTF8)
        for name in dirs:
            sub = _join(rel, name)
            if self.real(sub) in ancestors:
                self.note("skipped", sub, LOOP)
            else:
                found += self.files_under(sub, ancestors)
        return sorted(found)

    def ancestors(self, rel: str) -> frozenset:
        """The real paths of SRC and of every folder down to SRC/rel."""
        parts = rel.split("/") if rel else []
        return frozenset(self.real("/".join(parts[:k])) for k in range(len(parts) + 1))


def read_synset_text(path: str) -> dict[str, str]:
    """``n01440764<TAB>tench, Tinca tinca`` lines -> {synset: text}."""
    lines = _read_lines(path, "--synset_text")
    rows = [line.partition("\t" if "\t" in line else " ") for line in lines]
    return {synset.strip(): text.strip() for synset, _, text in rows}


def read_val_labels(path: str, filenames: list[str]) -> list[str]:
    """Synsets of the sorted flat ``filenames`` from a labels file.

    One synset per line (in sorted-filename order: TF-slim's
    imagenet_2012_validation_synset_labels.txt), or one ILSVRC id per line (the devkit's
    ILSVRC2012_validation_ground_truth.txt, mapped by its data/meta.mat), or ``filename
    synset`` per line, with the filename with or without extension (Kaggle's
    LOC_val_solution.csv rows too).
    """
    rows = [re.split(r"[\s,]+", line.strip()) for line in _read_lines(path, "--val_labels")]
    rows = [r for r in rows if r != [""] and r[0] != "ImageId"]  # LOC_val_solution.csv header
    if rows and all(len(r) == 1 for r in rows):
        if len(rows) != len(filenames):
            raise UsageError(f"{path}: {len(rows)} labels for {len(filenames)} images")
        if all(r[0].isdigit() for r in rows):
            synsets = _devkit_synsets(path)
            rows = [[synsets.get(int(r[0]), r[0])] for r in rows]
        return [r[0] for r in rows]
    by_name = {}
    for number, row in enumerate(rows, 1):
        if len(row) < 2:
            raise UsageError(f"{path}: row {number} has no synset after the filename")
        by_name[os.path.splitext(row[0])[0]] = row[1]
    labels = [by_name.get(name, by_name.get(os.path.splitext(name)[0])) for name in filenames]
    if None in labels:
        raise UsageError(f"{path}: no label for {shown(filenames[labels.index(None)])}")
    return labels


def _devkit_synsets(path: str) -> dict[int, str]:
    """{ILSVRC2012_ID: synset} from the devkit's meta.mat, beside ``path`` or in ../data."""
    here = os.path.dirname(os.path.abspath(path))
    found = [p for p in (here, os.path.join(here, "..", "data")) if os.path.isfile(f"{p}/meta.mat")]
    if not found:
        raise UsageError(
            f"--val_labels {path}: ILSVRC ids: the devkit's meta.mat, which maps them to synsets, "
            "is neither beside it nor in ../data"
        )
    meta = os.path.normpath(os.path.join(found[0], "meta.mat"))
    import scipy.io

    try:
        rows = scipy.io.loadmat(meta, squeeze_me=True)["synsets"]
        return {int(row["ILSVRC2012_ID"]): str(row["WNID"]) for row in rows}
    except Exception as err:  # scipy raises several kinds for a file that is no meta.mat
        raise UsageError(f"{meta}: not the ImageNet devkit's meta.mat ({reason(err)})") from err


def _read_lines(path: str, flag: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f if line.strip()]
    except OSError as err:
        raise UsageError(f"{flag} {path}: cannot read ({err.strerror})") from err
    except UnicodeDecodeError as err:
        raise UsageError(f"{flag} {path}: not a text file (UTF-8 expected)") from err


def _split_folders(src: str, val_labels: str | None, val_fraction: float | None) -> dict:
    """{split: folder relative to SRC}: train/ and val/, or SRC itself when it has neither."""
    folders = {
        s: name for s, name in SOURCE_SPLITS.items() if os.path.isdir(os.path.join(src, name))
    }
    if val_labels and "validation" not in folders:
        raise UsageError(f"{src}: no val/ folder for --val_labels {val_labels}")
    if val_fraction is not None and "validation" in folders:
        raise UsageError(
            f"--val_fraction {val_fraction}: {os.path.join(src, 'val')} is a validation split "
            "already (--val_fraction splits a source without a val/ folder)"
        )
    return folders or {"train": ""}


def _classes(scan: _Scan, folder: str, val_labels: str | None) -> list[str]:
    """The sorted class names: the class folders of ``folder``, or the synsets of
    ``--val_labels`` when it is a flat val/ folder."""
    if val_labels:
        return sorted(set(read_val_labels(val_labels, scan.entries(folder)[1])))
    dirs, files = scan.entries(folder)
    where = _where(scan.src, folder)
    if not dirs:
        layout = "<synset>/ folders" if folder else "train/ and val/ folders, or <class>/ folders"
        hint = "; pass --val_labels FILE for a flat val/ folder" if files and folder else ""
        raise UsageError(f"{where}: no class folders (expected {layout} of images){hint}")
    for name in dirs:
        path = shown(os.path.join(scan.src, folder, name))
        if not _is_utf8(name):
            raise UsageError(f"{path}: class folder name is not UTF-8; rename it")
        if any(c in name for c in "\t\n\r"):  # labels.txt holds a name a line, tab-separated
            path = path.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
            raise UsageError(f"{path}: class folder name holds a tab or line break; rename it")
    return [d for d in dirs if scan.real(_join(folder, d)) not in scan.ancestors(folder)]


def _split_items(scan: _Scan, folder: str, label_of: dict, val_labels: str | None, defines: bool):
    """The images of one split's ``folder``.  ``defines``: its folders are the classes, so an
    empty one is refused (dropping it would renumber the classes after it)."""

    def item(rel: str, synset: str, where: str) -> Item:
        if synset not in label_of:
            raise UsageError(f"{where}: synset {synset} is not a class of the training folder")
        return Item(rel, label_of[synset][0], synset, label_of[synset][1])

    dirs, files = scan.entries(folder)
    if val_labels:
        for name in dirs:
            scan.note("ignored", _join(folder, name), "folder in a flat val/ (--val_labels)")
        labels = read_val_labels(val_labels, files)
        return [item(_join(folder, f), s, val_labels) for f, s in zip(files, labels)]
    if files and not dirs and not defines:
        raise UsageError(
            f"{_where(scan.src, folder)}: {len(files)} images and no class folders (ImageNet's "
            "flat val/): pass --val_labels with the devkit's ILSVRC2012_validation_ground_truth"
            ".txt, TF-slim's imagenet_2012_validation_synset_labels.txt or LOC_val_solution.csv"
        )
    for name in files:
        scan.note("ignored", _join(folder, name), LOOSE)
    items = []
    for synset in dirs:
        rel = _join(folder, synset)
        if scan.real(rel) in scan.ancestors(folder):
            scan.note("skipped", rel, LOOP)
            continue
        found = scan.files_under(rel, scan.ancestors(folder))
        where = shown(os.path.join(scan.src, rel))
        if not found and defines:
            raise UsageError(
                f"{where}: empty class folder (no image files); remove it or add images"
            )
        if not found:
            scan.note("note", rel, "empty class folder: the class has no images here")
        items += [item(path, synset, where) for path in found]
    return items


def split_validation(items: list[Item], fraction: float, seed: int) -> tuple[list, list]:
    """(train, validation) items: of each class's n images, round(fraction * n), at least 1 and
    at most n - 1, go to validation (none of a class with one image).  Which ones is decided by
    a hash of the seed and each file's path, so the split is the same on every run, and adding
    images to a class moves few of the others."""

    def rank(it: Item) -> str:
        key = f"{seed}\0{it.rel}".encode("utf-8", "surrogateescape")
        return hashlib.sha1(key).hexdigest()

    by_class: dict[int, list[Item]] = {}
    for it in items:
        by_class.setdefault(it.label, []).append(it)
    chosen = set()
    for group in by_class.values():
        n = len(group)
        count = 0 if n < 2 else min(n - 1, max(1, int(fraction * n + 0.5)))
        chosen.update(sorted(group, key=rank)[:count])
    return [i for i in items if i not in chosen], [i for i in items if i in chosen]


def scan_source(
    src: str,
    out: str,
    val_labels: str | None = None,
    synset_text: str | None = None,
    val_fraction: float | None = None,
    split_seed: int = SPLIT_SEED,
) -> Source:
    """The classes and images of ``src``; UsageError if it is malformed.  ``out`` (the output
    folder) is left out of the listing when it lies inside ``src``."""
    if not os.path.isdir(src):
        raise UsageError(f"source folder not found: {src}")
    if val_fraction is not None and not 0 < val_fraction < 1:
        raise UsageError(f"--val_fraction must be between 0 and 1, got {val_fraction}")
    scan = _Scan(src, out)
    folders = _split_folders(src, val_labels, val_fraction)
    class_split = "train" if "train" in folders else "validation"
    synsets = _classes(scan, folders[class_split], val_labels if class_split != "train" else None)
    known = read_synset_text(synset_text) if synset_text else {}
    texts = [known.get(s, s) for s in synsets]
    label_of = {s: (k + 1, texts[k]) for k, s in enumerate(synsets)}
    items = {}
    for split, folder in folders.items():
        labels_file = val_labels if split == "validation" else None
        items[split] = _split_items(scan, folder, label_of, labels_file, split == class_split)
        if not items[split]:
            raise UsageError(f"{_where(src, folder)}: no image files")
    source = Source(synsets, texts, items, folders, scan.notes)
    if val_fraction is not None:
        _set_aside(source, val_fraction, split_seed)
    return source


def _set_aside(source: Source, fraction: float, seed: int) -> None:
    """--val_fraction: move part of each class of the training images to validation."""
    folder = source.folders["train"]
    train, val = split_validation(source.items["train"], fraction, seed)
    source.items["train"] = train
    if val:
        source.items["validation"], source.folders["validation"] = val, folder
    per_class = collections.Counter(it.synset for it in source.items["train"] + val)
    for synset in source.synsets:
        if per_class.get(synset) == 1:
            source.notes.append(("note", _join(folder, synset), "1 image: none for validation"))
    source.val_split = {"from": folder or ".", "fraction": fraction, "seed": seed}
    source.val_split["images"] = len(val)


# ---------------------------------------------------------------- the conversion


def _shard_counts(source: Source, src: str, requested: dict) -> dict[str, int]:
    """{split: shards}: the flag's count, checked, or shard_count() of the split's images."""
    counts = {}
    for split, items in source.items.items():
        count, flag = requested.get(split), f"--{split}_shards"
        if count is None:
            count = shard_count(len(items))
        elif count < 1:
            raise UsageError(f"{flag} must be at least 1, got {count}")
        elif count > len(items):
            where = _where(src, source.folders[split])
            raise UsageError(f"{flag} {count} is more than the {len(items)} images in {where}")
        counts[split] = count
    return counts


def _check_classes(source: Source, src: str, results: list[ShardResult]) -> None:
    """A class left without images (its files vanished or none is readable) is refused:
    numbered, listed in labels.txt and never seen in training."""
    split = "train" if "train" in source.items else "validation"
    skipped = {rel for result in results for rel, _ in result.skipped}
    found = {it.synset for it in source.items[split] if it.rel not in skipped}
    for synset in source.synsets:
        if synset not in found:
            where = _where(src, _join(source.folders[split], synset))
            raise UsageError(
                f"{where}: no readable images (listed in the report); the class would be empty"
            )


def _warn_without_validation(source: Source, src: str) -> str | None:
    """The warning for a source without validation images (training's evaluation reads the
    validation shards), printed before the long part of the run."""
    if "validation" in source.items:
        return None
    if source.val_split:
        why = "--val_fraction left no validation images (every class has a single image)"
    else:
        why = "no validation images (no val/ folder)"
    warning = (
        f"{shown(src)}: {why}; evaluation during and after training needs validation "
        "shards: add --val_fraction 0.1 to set 10% of each class aside"
    )
    print(f"warning: {warning}", file=sys.stderr)
    return warning


def convert(
    src: str,
    out: str,
    *,
    train_shards: int | None = None,
    validation_shards: int | None = None,
    workers: int | None = None,
    val_labels: str | None = None,
    synset_text: str | None = None,
    val_fraction: float | None = None,
    split_seed: int = SPLIT_SEED,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Convert ``src`` into shards in ``out``; returns the dataset info that was written.

    Shard counts default to shard_count() of each split's images.  Also writes
    ``conversion_report.txt`` (what the scan left out, skipped and re-encoded files) and prints
    one line on stderr for each kind of file that was left out.  Nothing is written to ``out``
    before SRC and the flags are checked; then ``out`` is claimed (``info.claim``: a folder
    holding another dataset is refused, or emptied with ``overwrite``), the shards are written
    (those an earlier run of the same command finished are kept) and dataset_info.json last.
    """
    workers = cores.usable() if workers is None else workers
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    source = scan_source(src, out, val_labels, synset_text, val_fraction, split_seed)
    requested = {"train": train_shards, "validation": validation_shards}
    num_shards = _shard_counts(source, src, requested)
    warning = _warn_without_validation(source, src)
    tasks = [
        task
        for split, items in source.items.items()  # train first
        for task in plan_shards(src, out, split, items, num_shards[split])
    ]
    writer = [storage.realpath(f) if f else None for f in (src, val_labels, synset_text)]
    info.claim(out, {"convert": writer + [num_shards, val_fraction, split_seed]}, overwrite)
    kept = [result for result in map(kept_shard, tasks) if result]
    todo = [task for task in tasks if task.name not in {result.name for result in kept}]
    if todo and storage.exists(os.path.join(out, info.INFO_FILE)):
        storage.remove(os.path.join(out, info.INFO_FILE))  # the dataset changes: unpublished first
    images = sum(len(task.items) for task in tasks)
    done = images - sum(len(task.items) for task in todo)
    disable = None if progress else True  # None: a bar on a terminal only
    with tqdm(total=images, initial=done, unit="image", desc="convert", disable=disable) as bar:
        results = sorted(kept + run_tasks(todo, workers, bar), key=lambda r: r.name)
    rows = [(kind, os.path.join(src, rel), why) for kind, rel, why in source.notes]
    rows += [("skipped", os.path.join(src, rel), why) for r in results for rel, why in r.skipped]
    reencoded = sorted(row for r in results for row in r.reencoded)
    _write_report(out, src, source, rows, reencoded, warning)
    _tell(out, src, source.notes, sum(len(r.skipped) for r in results))
    _check_classes(source, src, results)
    files = {r.name: r.records for r in results}
    result = {
        "name": shown(os.path.basename(os.path.abspath(src))),
        "num_classes": len(source.synsets),
        "label_offset": 1,
        "splits": {
            split: sum(n for name, n in files.items() if name.startswith(split + "-"))
            for split in source.items
        },
        "synsets": source.synsets,
        "texts": source.texts,
        "files": files,
    }
    if source.val_split:
        result["val_split"] = source.val_split
    return info.write_info(out, result)


def _write_report(out: str, src: str, source: Source, rows, reencoded, warning) -> None:
    """conversion_report.txt: a comment header, then one ``kind<TAB>path<TAB>why`` row per
    file the conversion left out, skipped or re-encoded."""
    skipped = sum(1 for row in rows if row[0] == "skipped")
    lines = [f"# conversion of {shown(src)}: {skipped} skipped, {len(reencoded)} re-encoded"]
    if source.val_split:
        split = source.val_split
        lines.append(
            f"# validation: {split['images']} images set aside from "
            f"{_where(src, source.folders['train'])}, {split['fraction']:g} of each "
            f"class (--val_fraction {split['fraction']:g} --split_seed {split['seed']})"
        )
    if warning:
        lines.append(f"# warning: {warning}")
    lines += [f"{kind}\t{shown(path)}\t{why}" for kind, path, why in sorted(rows)]
    lines += [
        f"re-encoded\t{shown(os.path.join(src, rel))}\t{what} -> RGB JPEG"
        for rel, what in reencoded
    ]
    atomic.write_text(os.path.join(out, REPORT_FILE), "\n".join(lines) + "\n")


def _tell(out: str, src: str, notes, unreadable: int) -> None:
    """One line on stderr per kind of thing the conversion left out or changed."""
    report = os.path.join(out, REPORT_FILE)
    groups: dict[tuple[str, str], list[str]] = {}
    for kind, rel, why in notes:
        groups.setdefault((kind, why), []).append(shown(os.path.join(src, rel)))
    for (kind, why), paths in sorted(groups.items()):
        more = f" and {len(paths) - 1} more" if len(paths) > 1 else ""
        print(f"convert: {kind} {paths[0]}{more}: {why}; listed in {report}", file=sys.stderr)
    if unreadable:
        print(
            f"convert: skipped {unreadable} unreadable file(s) of {shown(src)}, listed in {report}",
            file=sys.stderr,
        )


def _parser() -> argparse.ArgumentParser:
    parser = UsageParser(
        prog="python -m vgg_keras.data.convert",
        description=__doc__.split("\n\n")[0],
        epilog="docs/data.md describes the layouts, the shard counts and the report.",
    )
    parser.add_argument(
        "src", help="folder with train/<class>/* and val/<class>/* (or val/*), or <class>/*"
    )
    parser.add_argument("out", help="output folder for the shards and dataset_info.json")
    for split in SOURCE_SPLITS:  # schema.SPLIT_PREFIXES' keys, without importing TF
        parser.add_argument(
            f"--{split}_shards",
            type=int,
            help=f"default: the {split} images / {IMAGES_PER_SHARD} rounded to a power of two",
        )
    parser.add_argument(
        "--workers", type=int, help="processes (default: one per CPU core this process may use)"
    )
    parser.add_argument(
        "--val_labels",
        help="labels for a flat val/ folder: one synset per line in sorted-filename order, "
        "or 'filename synset' lines",
    )
    parser.add_argument(
        "--synset_text", help="lines 'n01440764<TAB>tench, Tinca tinca' for image/class/text"
    )
    parser.add_argument(
        "--val_fraction",
        type=float,
        help="for a source without val/: set this fraction of each class aside for validation",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the dataset the output folder holds (its shards, dataset_info.json, "
        "labels.txt, report)",
    )
    parser.add_argument(
        "--split_seed",
        type=int,
        default=SPLIT_SEED,
        help=f"which images --val_fraction sets aside (default {SPLIT_SEED})",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    received = []

    # Every stop signal (signals.STOP) raises KeyboardInterrupt in this process, so all stop
    # the workers by one path and end in one line (SIGTERM's default action would kill this
    # process alone, and its workers would die on broken pipes, each with a traceback).
    def stop(signum, _frame=None) -> None:
        received.append(signum)
        raise KeyboardInterrupt()

    try:
        with _handling(STOP, stop):
            from vgg_keras import compat  # noqa: F401 (TensorFlow loads here, seconds)

            # The signal is remembered too: TF 1.15's import swallows a KeyboardInterrupt raised
            # early in it (its import then completes), so it is raised again once TF is loaded.
            if received:
                stop(received[-1])
            result = convert(**vars(args))  # the flags are convert()'s keywords
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return exit_code(received[-1] if received else signal.SIGINT)
    print(
        f"{args.out}: {result['num_classes']} classes, {result['splits']} records "
        f"in {len(result['files'])} shards"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
