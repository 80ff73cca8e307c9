"""Checkpoints: ``<log_dir>/model.ckpt-<step>``, listing them, checking they fit, restoring.

A checkpoint counts only when its ``.index`` file exists: TensorFlow writes the data shards
first and the index last, so a run killed while saving leaves nothing a reader would take.
(Checked on TF 2.21: ``SaveV2`` writes ``<prefix>.data-00000-of-00001.tempstate<random>``,
renames it, then writes the index under a temporary name and renames that; a sharded save
works in ``<prefix>_temp/`` first.  Rotation deletes the index before the data.)  What a killed
save leaves behind is only those temporary names, which ``remove_partial`` deletes.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil

from vgg_keras.compat import tf
from vgg_keras.errors import UsageError, reason

PREFIX = "model.ckpt"
_STEP = re.compile(rf"^{re.escape(PREFIX)}-(\d+)\.index$")
# Temporary names of an unfinished save (see the module docstring).
_PARTIAL = re.compile(rf"{re.escape(PREFIX)}-\d+(\..*\.tempstate\d*|_temp.*)|checkpoint\.tmp\w+")
_DATA = re.compile(rf"{re.escape(PREFIX)}-(\d+)\.data-\d+-of-\d+")
_LAYER_VARIABLE = re.compile(r"[^/]+/(kernel|bias)")  # not optimizer slots like .../Momentum


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


def remove_partial(folder: str) -> list[str]:
    """Delete what interrupted saves left in ``folder``: temporary data and index files,
    ``_temp`` folders of sharded saves, temporary copies of the ``checkpoint`` state file, and
    the data files of a checkpoint older than the newest whose index is gone (a rotation cut
    short between its two deletions).

    Only while no trainer writes there (hold the run lock).  Returns the names removed.
    """
    complete = [checkpoint_step(path) for path in list_checkpoints(folder)]
    removed = []
    for path in glob.glob(os.path.join(glob.escape(folder), "*")):
        name = os.path.basename(path)
        data = _DATA.fullmatch(name)
        step = int(data[1]) if data else None
        rotated = step is not None and step not in complete and step < max(complete, default=-1)
        if rotated or _PARTIAL.fullmatch(name):
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)
            removed.append(name)
    return removed


def remove_oldest(folder: str, keep: int) -> list[str]:
    """Delete the complete checkpoints of ``folder`` but the newest ``keep`` (index first, then
    data, as the Saver's own rotation).  The Saver deletes at most one per save, so a folder
    resumed with a smaller --keep_checkpoint_max (or after kill -9 cycles) would keep its extra
    ones for ever.  Only while no other trainer writes there; returns the prefixes removed."""
    doomed = list_checkpoints(folder)[:-keep] if keep > 0 else []
    for prefix in doomed:
        for path in [prefix + ".index", *sorted(glob.glob(glob.escape(prefix) + ".data-*"))]:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
    return doomed


def state_file_target(folder: str) -> str | None:
    """The checkpoint that TensorFlow's ``checkpoint`` state file in ``folder`` names, if any."""
    try:
        state = tf.train.get_checkpoint_state(folder)
    except (tf.errors.OpError, ValueError):  # an unparsable state file names nothing
        return None
    if state is None or not state.model_checkpoint_path:
        return None
    # get_checkpoint_state already joins a relative entry to ``folder``.
    return state.model_checkpoint_path


def restore(saver, session, path: str) -> None:
    """``saver.restore`` with a one-line UsageError naming the file when it cannot be read."""
    try:
        with session.graph.as_default():  # the v1 Saver works only in graph mode
            saver.restore(session, path)
    except (tf.errors.OpError, ValueError) as err:
        raise UsageError(
            f"{path}: unreadable checkpoint ({reason(err)}); move its files away to "
            f"resume from an earlier one"
        ) from err


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
        raise UsageError(f"{path}: unreadable checkpoint ({reason(err)})") from err


def _width(shapes: dict[str, list[int]]) -> float | None:
    """The width multiplier: block1_conv1's filters over the full network's 64."""
    kernel = shapes.get("block1_conv1/kernel")
    return kernel[-1] / 64 if kernel else None


def _describe(shapes: dict[str, list[int]], width: bool = False) -> str:
    arch = "vgg19" if any(k.startswith("block3_conv4/") for k in shapes) else "vgg16"
    classes = shapes.get("predictions/kernel", [None, "?"])[-1]
    at = f" at width {_width(shapes):g}" if width and _width(shapes) is not None else ""
    return f"{arch}{at} with {classes} classes"


def check_compatible(path: str, variables) -> None:
    """Raise a UsageError naming both sides when ``path`` does not hold ``variables``."""
    stored = variable_shapes(path)
    wanted = {v.op.name: v.shape.as_list() for v in variables}
    missing = [name for name in wanted if name not in stored]
    wrong = [n for n in wanted if n in stored and list(stored[n]) != wanted[n]]
    # Layers the model lacks: a VGG19 checkpoint holds every VGG16 variable with the same
    # shapes, so without this a VGG16 model would silently load a VGG19 checkpoint.
    extra = [n for n in stored if _LAYER_VARIABLE.fullmatch(n) and n not in wanted]
    if missing or wrong or extra:
        if missing:
            detail = f"missing {missing[0]}"
        elif wrong:
            detail = f"{wrong[0]} is {stored[wrong[0]]}"
        else:
            detail = f"unexpected {sorted(extra)[0]}"
        width = _width(stored) != _width(wanted)  # else "vgg16 ..., model is vgg16 ..." alike
        raise UsageError(
            f"{path}: checkpoint has {_describe(stored, width)}, model is "
            f"{_describe(wanted, width)} ({detail})"
        )


def restore_subset(sess, path: str, variables, exclude: list[str]) -> list[str]:
    """Initialise ``variables`` from ``path`` except those under an ``exclude`` scope.

    For fine-tuning: a variable absent from the checkpoint or of another shape is an error
    (so a typo in --restore_exclude does not silently train from scratch).  Returns the names
    restored.
    """
    stored = variable_shapes(path)
    for scope in exclude:
        if not any(excluded(v.op.name, [scope]) for v in variables):
            # A misspelt scope would otherwise restore the layer it meant to leave out.
            raise UsageError(f"--restore_exclude {scope}: the model has no such variable or scope")
    chosen = [v for v in variables if not excluded(v.op.name, exclude)]
    for v in chosen:
        name = v.op.name
        if name not in stored:
            raise UsageError(f"--restore_path {path}: has no variable {name}")
        if list(stored[name]) != v.shape.as_list():
            raise UsageError(
                f"--restore_path {path}: {name} is {stored[name]}, model needs "
                f"{v.shape.as_list()} (add its scope to --restore_exclude)"
            )
    reader = tf.train.load_checkpoint(path)
    assign(sess, chosen, [reader.get_tensor(v.op.name) for v in chosen])
    return [v.op.name for v in chosen]


def excluded(name: str, scopes: list[str]) -> bool:
    """True when ``name`` is one of ``scopes`` or lies under one (``fc1`` covers ``fc1/kernel``)."""
    return any(name == s or name.startswith(s.rstrip("/") + "/") for s in scopes)


def assign(sess, variables, values) -> None:
    """Set graph-mode ``variables`` to numpy ``values`` in one session call.

    Feeds each variable's initializer instead of building assign ops or a Saver: the training
    graph is finalized before its variables are initialised, so nothing may add ops then.  A
    mirrored variable is set through each of its per-device copies.
    """
    initializers, feeds = [], {}
    variables, values = list(variables), list(values)
    if len(variables) != len(values):
        raise ValueError(f"{len(variables)} variables but {len(values)} values")
    for variable, value in zip(variables, values):
        for part in getattr(variable, "values", None) or (variable,):
            initializers.append(part.initializer)
            feeds[part.initializer.inputs[1]] = value
    if initializers:
        sess.run(initializers, feed_dict=feeds)
