"""``dataset_info.json`` and ``labels.txt``: what the converter knows about a dataset folder.

dataset_info.json holds ``num_classes``, ``label_offset``, ``splits`` (records per split),
``synsets`` and ``texts`` (class k is line k), and ``files`` (records per shard file name), so
readers get exact sizes without reading the data.  labels.txt has one ``synset<TAB>text`` line
per class, in class order.
"""

from __future__ import annotations

import json
import os

from vgg_keras import atomic, documents
from vgg_keras.errors import UsageError

INFO_FILE = "dataset_info.json"
LABELS_FILE = "labels.txt"

# The keys readers use, and what each must hold; other keys are kept and not checked.
_INT_KEYS = {"num_classes": 1, "label_offset": None}  # key: smallest value allowed
_COUNT_KEYS = ("splits", "files")  # {name: records}
_TEXT_LIST_KEYS = ("synsets", "texts")


def read_info(data_dir: str) -> dict:
    """The folder's dataset_info.json, or {} when it has none.

    Its schema is checked here, once, so that a hand-edited file with a wrong type is one line
    naming the file and the key rather than a TypeError wherever the value is first used.
    """
    path = os.path.join(data_dir, INFO_FILE)
    meta = documents.read_json(path, "dataset info")
    _check_schema(path, meta)
    return meta


def _is_int(value, minimum: int | None) -> bool:
    # bool is an int to Python, never a count to us
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return minimum is None or value >= minimum


def _check_schema(path: str, meta) -> None:
    if not isinstance(meta, dict):
        raise UsageError(f"{path}: expected a JSON object, found {type(meta).__name__}")

    def bad(key: str, expected: str, value) -> UsageError:
        shown = json.dumps(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return UsageError(f"{path}: {key} must be {expected}, got {shown}")

    for key, minimum in _INT_KEYS.items():
        if key in meta and not _is_int(meta[key], minimum):
            bound = "" if minimum is None else f" >= {minimum}"
            raise bad(key, f"an integer{bound}", meta[key])
    for key in _COUNT_KEYS:
        if key not in meta:
            continue
        if not isinstance(meta[key], dict):
            raise bad(key, "an object of record counts", meta[key])
        for name, count in meta[key].items():
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


def write_info(data_dir: str, info: dict) -> None:
    """Write dataset_info.json and labels.txt atomically (temporary name, then rename)."""
    synsets, texts = info.get("synsets", []), info.get("texts", [])
    atomic.write_text(os.path.join(data_dir, INFO_FILE), json.dumps(info, indent=1, sort_keys=True))
    lines = "".join(f"{s}\t{t}\n" for s, t in zip(synsets, texts))
    atomic.write_text(os.path.join(data_dir, LABELS_FILE), lines)


def read_labels(path: str) -> list[str]:
    """Class names from a labels.txt (``synset<TAB>text`` or one name per line)."""
    try:
        with open(path, encoding="utf-8") as f:
            rows = [line.rstrip("\n") for line in f if line.strip()]
    except OSError as err:
        raise UsageError(f"{path}: cannot read labels ({err.strerror})") from err
    except ValueError as err:  # UnicodeDecodeError: a binary file
        raise UsageError(f"{path}: not a UTF-8 text file of labels ({err.reason})") from err
    return [row.split("\t", 1)[-1] for row in rows]
