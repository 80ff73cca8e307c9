"""Reading the documents a user or an earlier run hands the program: one reader, with bounds.

Settings files (JSON or YAML), config.json, dataset_info.json, best_checkpoint.json, evaluation
results, the run lock, an HCCL rank table and TF_CONFIG are all parsed here.  A file larger
than ``MAX_BYTES``, text that is not UTF-8, a document nested deeper than ``MAX_DEPTH`` or
holding more than ``MAX_VALUES`` values (YAML aliases counted each time they are used, so a few
hundred bytes of aliases cannot unfold into gigabytes downstream), or a top level of another
type than the caller expects is one UsageError naming the file: never a traceback, never a
MemoryError.  Checking what the keys hold stays with the caller that knows their meaning.
"""

from __future__ import annotations

import json

from vgg_keras import storage
from vgg_keras.errors import UsageError

MAX_BYTES = 64 << 20
MAX_DEPTH = 32
MAX_VALUES = 1_000_000


def read_json(path: str, what: str, kind: type = dict, required: bool = False, name: str = ""):
    """The JSON document in ``path`` (of type ``kind``); when there is no such file, an empty
    one (``kind()``), or with ``required`` an error.  ``name`` (the path by default) opens a
    message: ``--flag path`` where a flag gave it."""
    name = name or path
    text = read_text(path, what, name)
    if text is None and required:
        raise UsageError(f"{name}: no such file (expected the {what})")
    return kind() if text is None else parse(text, name, what, kind)


def read_text(path: str, what: str, name: str = "") -> str | None:
    """The text of ``path`` (None when absent), at most ``MAX_BYTES`` of UTF-8; ``name`` (the
    path by default) opens a message."""
    name = name or path
    try:
        with storage.open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise UsageError(f"{name}: unreadable {what} ({err.strerror})") from err
    if len(data) > MAX_BYTES:
        raise UsageError(f"{name}: unreadable {what} (larger than {MAX_BYTES >> 20} MB)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"{name}: unreadable {what} (not UTF-8 text)") from err


def parse(text: str, name: str, what: str, kind: type = dict, yaml: bool = False):
    """The document in ``text`` (JSON, or YAML with ``yaml``), checked as the module says;
    ``name`` (a path, or an environment variable) and ``what`` go into the message."""
    try:
        value = _load_yaml(text, name) if yaml else json.loads(text)
    except RecursionError as err:
        raise UsageError(f"{name}: unreadable {what} (nested too deeply)") from err
    except ValueError as err:
        raise UsageError(f"{name}: unreadable {what} ({_one_line(err)})") from err
    _check_bounds(value, name, what)
    if not isinstance(value, kind):
        expected = "a mapping" if kind is dict else f"a {kind.__name__}"
        raise UsageError(f"{name}: unreadable {what} (expected {expected}, found {_type(value)})")
    return value


def _load_yaml(text: str, name: str):
    try:
        import yaml
    except ImportError as err:
        raise UsageError(f"{name}: reading YAML needs PyYAML (pip install pyyaml)") from err
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(_one_line(err)) from err


def _check_bounds(value, name: str, what: str) -> None:
    """Walk the document once, stopping at the first bound it passes (time stays bounded)."""
    stack, seen = [(value, 0)], 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        if depth > MAX_DEPTH:
            raise UsageError(f"{name}: unreadable {what} (nested deeper than {MAX_DEPTH})")
        if seen > MAX_VALUES:
            raise UsageError(
                f"{name}: unreadable {what} (over {MAX_VALUES:,} values, aliases unfolded)"
            )
        if isinstance(item, (dict, list)):
            values = item.values() if isinstance(item, dict) else item
            stack.extend((v, depth + 1) for v in values)


def _one_line(err: Exception) -> str:
    """A parser's message as one line: what is wrong, and where (PyYAML's is several)."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    return f"{problem}, line {mark.line + 1} column {mark.column + 1}" if mark else problem


def _type(value) -> str:
    names = {dict: "a mapping", list: "a list", type(None): "null"}
    return names.get(type(value), type(value).__name__)
