"""Checkpoints: ``<log_dir>/model.ckpt-<step>``, listing them, checking they fit, restoring.

A checkpoint counts only when its ``.index`` file exists: TensorFlow writes the data shards
first and the index last, so a run killed while saving leaves nothing a reader would take.
"""

from __future__ import annotations

import os
import re

from vgg_keras.compat import tf, v1
from vgg_keras.errors import UsageError

PREFIX = "model.ckpt"
_STEP = re.compile(rf"^{re.escape(PREFIX)}-(\d+)\.index$")


def checkpoint_step(path: str) -> int:
    """The global step in a ``model.ckpt-<step>`` prefix."""
    match = re.search(r"-(\d+)$", path)
    if not match:
        raise UsageError(f"{path}: not a model.ckpt-<step> checkpoint prefix")
    return int(match.group(1))


def list_checkpoints(folder: str) -> list[str]:
    """Every complete ``model.ckpt-N`` prefix in ``folder``, in step order."""
    if not os.path.isdir(folder):
        return []
    found = []
    for name in os.listdir(folder):
        match = _STEP.match(name)
        if match:
            found.append((int(match.group(1)), os.path.join(folder, name[: -len(".index")])))
    return [path for _, path in sorted(found)]


def latest_checkpoint(folder: str) -> str | None:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def resolve(path: str) -> str:
    """A checkpoint prefix from a prefix or a folder (its latest checkpoint)."""
    if os.path.isdir(path):
        latest = latest_checkpoint(path)
        if latest is None:
            raise UsageError(f"no model.ckpt-* checkpoints in {path}")
        return latest
    if not os.path.exists(path + ".index"):
        raise UsageError(f"checkpoint not found: {path} (no {os.path.basename(path)}.index)")
    return path


def variable_shapes(path: str) -> dict[str, list[int]]:
    """{variable name: shape} stored in a checkpoint (a corrupt file is a UsageError)."""
    try:
        return tf.train.load_checkpoint(path).get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError) as err:
        raise UsageError(f"{path}: unreadable checkpoint ({_first_line(err)})") from err


def _first_line(err: Exception) -> str:
    text = getattr(err, "message", None) or str(err)
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__


def _describe(shapes: dict[str, list[int]]) -> str:
    arch = "vgg19" if any(k.startswith("block3_conv4/") for k in shapes) else "vgg16"
    classes = shapes.get("predictions/kernel", [None, "?"])[-1]
    return f"{arch} with {classes} classes"


def check_compatible(path: str, variables) -> None:
    """Raise a UsageError naming both sides when ``path`` does not hold ``variables``."""
    stored = variable_shapes(path)
    wanted = {v.op.name: v.shape.as_list() for v in variables}
    missing = [name for name in wanted if name not in stored]
    wrong = [n for n in wanted if n in stored and list(stored[n]) != wanted[n]]
    if missing or wrong:
        detail = f"missing {missing[0]}" if missing else f"{wrong[0]} is {stored[wrong[0]]}"
        raise UsageError(
            f"{path}: checkpoint has {_describe(stored)} variables, model is "
            f"{_describe(wanted)} ({detail})"
        )


def restore_subset(sess, path: str, variables, exclude: list[str]) -> list[str]:
    """Initialise ``variables`` from ``path`` except those under an ``exclude`` scope.

    For fine-tuning: a variable absent from the checkpoint or of another shape is an error
    (so a typo in --restore_exclude does not silently train from scratch).  Returns the names
    restored.
    """
    stored = variable_shapes(path)
    chosen = [
        v
        for v in variables
        if not any(v.op.name == s or v.op.name.startswith(s.rstrip("/") + "/") for s in exclude)
    ]
    for v in chosen:
        name = v.op.name
        if name not in stored:
            raise UsageError(f"--restore_path {path}: has no variable {name}")
        if list(stored[name]) != v.shape.as_list():
            raise UsageError(
                f"--restore_path {path}: {name} is {stored[name]}, model needs "
                f"{v.shape.as_list()} (add its scope to --restore_exclude)"
            )
    if chosen:
        v1.train.Saver(var_list=chosen).restore(sess, path)
    return [v.op.name for v in chosen]
