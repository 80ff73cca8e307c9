"""``dataset_info.json`` and ``labels.txt``: what the converter knows about a dataset folder.

dataset_info.json holds ``num_classes``, ``label_offset``, ``splits`` (records per split),
``synsets`` and ``texts`` (class k is line k), and ``files`` (records per shard file name), so
readers get exact sizes without reading the data.  labels.txt has one ``synset<TAB>text`` line
per class, in class order.
"""

from __future__ import annotations

import json
import os

from vgg_keras import atomic
from vgg_keras.errors import UsageError

INFO_FILE = "dataset_info.json"
LABELS_FILE = "labels.txt"


def read_info(data_dir: str) -> dict:
    """The folder's dataset_info.json, or {} when it has none."""
    return read_json(os.path.join(data_dir, INFO_FILE), "dataset info")


def read_json(path: str, what: str) -> dict:
    """The JSON object in ``path``, or {} when the file is absent; unreadable is a UsageError."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise UsageError(f"{path}: unreadable {what} ({err})") from err


def write_info(data_dir: str, info: dict) -> None:
    """Write dataset_info.json and labels.txt atomically (temporary name, then rename)."""
    synsets, texts = info.get("synsets", []), info.get("texts", [])
    atomic.write_text(os.path.join(data_dir, INFO_FILE), json.dumps(info, indent=1, sort_keys=True))
    lines = "".join(f"{s}\t{t}\n" for s, t in zip(synsets, texts))
    atomic.write_text(os.path.join(data_dir, LABELS_FILE), lines)


def read_labels(path: str) -> list[str]:
    """Class names from a labels.txt (``synset<TAB>text`` or one name per line)."""
    try:
        with open(path) as f:
            rows = [line.rstrip("\n") for line in f if line.strip()]
    except OSError as err:
        raise UsageError(f"{path}: cannot read labels ({err.strerror})") from err
    return [row.split("\t", 1)[-1] for row in rows]
