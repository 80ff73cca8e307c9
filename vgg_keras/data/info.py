"""A dataset folder's files: the manifest ``dataset_info.json``, ``labels.txt``, the writer's state.

dataset_info.json holds ``num_classes``, ``label_offset``, ``splits`` (records per split),
``synsets`` and ``texts`` (class k is line k), ``files`` (records per shard file name) and
``bytes`` (each shard's size), so readers get exact sizes without reading the data and can tell
a changed shard.  labels.txt has one ``synset<TAB>text`` line per class, in class order.

A dataset is visible only when complete.  Its writer (the converter, the demo builder) first
claims the folder (``claim``: its state in ``.convert/``), then writes the shards, then the
manifest, last.  So a folder with ``.convert/`` and no manifest is an unfinished dataset, which
readers refuse; a folder with neither is TF-slim's shards as they are, counted once; and with a
manifest, exactly the shards it lists are the dataset.  Nothing here renames a folder: the
order of the writes is the whole protocol, and it holds where rename does not (object stores).
"""

from __future__ import annotations

import json
import os
import re

from vgg_keras import atomic, documents, storage
from vgg_keras.errors import UsageError, reason

INFO_FILE = "dataset_info.json"
LABELS_FILE = "labels.txt"
REPORT_FILE = "conversion_report.txt"
COUNTS_CACHE = "record_counts.json"  # the counts of shards without a manifest
STATE_DIR = ".convert"  # the writer's state: who writes here, the finished shards
WRITER_FILE = "writer.json"
SHARD_NAME = re.compile(r"(train|validation)-\d{5,}-of-\d{5,}")

# The keys readers use, and what each must hold; other keys are kept and not checked.
_INT_KEYS = {"num_classes": 1, "label_offset": None}  # key: smallest value allowed
_COUNT_KEYS = ("splits", "files", "bytes")  # {name: records or bytes}
_TEXT_LIST_KEYS = ("synsets", "texts")


def read_info(data_dir: str) -> dict:
    """The folder's dataset_info.json, or {} when it has none (TF-slim's shards); a UsageError
    when the folder holds an unfinished dataset (a writer's state and no manifest yet).

    Its schema is checked here, once, so that a hand-edited file with a wrong type is one line
    naming the file and the key rather than a TypeError wherever the value is first used.
    """
    path = os.path.join(data_dir, INFO_FILE)
    if not storage.exists(path) and storage.isdir(os.path.join(data_dir, STATE_DIR)):
        raise UsageError(
            f"{data_dir}: an unfinished dataset (no {INFO_FILE} yet): run the command that wrote "
            f"it again to finish it (or delete {STATE_DIR}/ to read its shards as they are)"
        )
    meta = documents.read_json(path, "dataset info")
    _check_schema(path, meta)
    return meta


def _is_int(value, minimum: int | None) -> bool:
    # bool is an int to Python, never a count to us
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return minimum is None or value >= minimum


def _check_schema(path: str, meta: dict) -> None:
    def bad(key: str, expected: str, value) -> UsageError:
        shown = json.dumps(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return UsageError(f"{path}: {key} must be {expected}, got {shown}")

    for key, minimum in _INT_KEYS.items():
        if key in meta and not _is_int(meta[key], minimum):
            bound = "" if minimum is None else f" >= {minimum}"
            raise bad(key, f"an integer{bound}", meta[key])
    for key in _COUNT_KEYS:
        value = meta.get(key, {})
        if not isinstance(value, dict):
            raise bad(key, "an object of record counts", value)
        for name, count in value.items():
            if not _is_int(count, 0):
                raise bad(f"{key}[{json.dumps(name)}]", "an integer >= 0", count)
    for key in _TEXT_LIST_KEYS:
        value = meta.get(key, [])
        if not isinstance(value, list):
            raise bad(key, "a list of strings", value)
        for index, text in enumerate(value):
            if not isinstance(text, str):
                raise bad(f"{key}[{index}]", "a string", text)
    if not isinstance(meta.get("name", ""), str):
        raise bad("name", "a string", meta["name"])


def write_info(data_dir: str, info: dict) -> dict:
    """Write labels.txt, then dataset_info.json, last, with the size of every shard it lists:
    the dataset is published.  Returns what dataset_info.json holds."""
    lines = "".join(f"{s}\t{t}\n" for s, t in zip(info.get("synsets", []), info.get("texts", [])))
    atomic.write_text(os.path.join(data_dir, LABELS_FILE), lines)
    sizes = {name: storage.getsize(os.path.join(data_dir, name)) for name in info["files"]}
    info = {**info, "bytes": sizes}
    atomic.write_text(os.path.join(data_dir, INFO_FILE), json.dumps(info, indent=1, sort_keys=True))
    return info


def check_sizes(data_dir: str, paths) -> None:
    """A UsageError naming the first of ``paths`` whose size is not the one dataset_info.json
    lists (a shard changed since the dataset was written); datasets without sizes pass."""
    listed = read_info(data_dir).get("bytes", {})
    for path in paths:
        want, size = listed.get(os.path.basename(path)), storage.getsize(path)
        if want is not None and size != want:
            raise UsageError(
                f"{path}: {size} bytes, {INFO_FILE} lists {want}: not the shard that was "
                f"written (python -m vgg_keras.data.diagnose {data_dir} checks every record)"
            )


def claim(out: str, writer: dict, overwrite: bool = False) -> None:
    """Make ``out`` the folder of the dataset ``writer`` (what the command writes) describes,
    before anything else is written there.

    A folder whose state names the same writer is its own (an earlier run, finished or
    interrupted): its files stay, for reuse.  Any other folder holding a dataset's files
    (shards, a manifest, labels.txt, a report, another writer's state) is refused; with
    ``overwrite`` they are deleted, the manifest first.  The writer's state is written before
    that, so the folder reads as an unfinished dataset until the new manifest is written.
    """
    state = os.path.join(out, STATE_DIR)
    try:
        if documents.read_json(os.path.join(state, WRITER_FILE), "writer state") == writer:
            return
    except UsageError:
        pass  # damaged: not ours
    names = (INFO_FILE, LABELS_FILE, REPORT_FILE, COUNTS_CACHE)
    present = sorted(
        (n for n in _listdir(out) if n in names or SHARD_NAME.fullmatch(n)),
        key=lambda n: n != INFO_FILE,
    )
    present += [STATE_DIR] if any(n[:1] != "." for n in _listdir(state)) else []
    if present and not overwrite:
        raise UsageError(
            f"{os.path.join(out, present[0])}: the output folder holds another dataset's files; "
            "use an empty folder, or --overwrite to replace that dataset"
        )
    try:
        storage.makedirs(state)  # first: from here on, the folder is unfinished
        for name in present:
            path = os.path.join(out, name)
            storage.rmtree(path, ignore_errors=False) if name == STATE_DIR else storage.remove(path)
        storage.makedirs(state)
        atomic.write_text(os.path.join(state, WRITER_FILE), json.dumps(writer, sort_keys=True))
    except OSError as err:
        raise UsageError(f"{out}: cannot write the output folder ({reason(err)})") from err


def _listdir(folder: str) -> list[str]:
    return storage.listdir(folder) if storage.isdir(folder) else []


def read_labels(path: str) -> list[str]:
    """Class names from a labels.txt (``synset<TAB>text`` or one name per line)."""
    try:
        with storage.open(path, encoding="utf-8") as f:
            rows = [line.rstrip("\n") for line in f if line.strip()]
    except OSError as err:
        raise UsageError(f"{path}: cannot read labels ({err.strerror})") from err
    except ValueError as err:  # UnicodeDecodeError: a binary file
        raise UsageError(f"{path}: not a UTF-8 text file of labels ({err.reason})") from err
    return [row.split("\t", 1)[-1] for row in rows]
