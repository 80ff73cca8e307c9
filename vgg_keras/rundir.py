"""A run's folder (``--log_dir``): the one owner of every file name in it.

    config.json            the resolved settings, and what the run recorded ("run": steps per
                           epoch, global batch, training images)
    model.ckpt-<step>.*    checkpoints (``.index`` last: a checkpoint counts once it exists)
    checkpoint             TensorFlow's state file naming the newest
    best_checkpoint.json   the checkpoint with the best validation top-1, kept out of rotation
    train.log  metrics.jsonl  events.out.tfevents.*    the log, one JSON line per log line,
                           TensorBoard
    train.lock             one trainer at a time (runlock.py)
    eval_results[.<tag>].json/.csv, eval_curve[.<tag>].png, eval.log, eval/  what run_eval.py
                           writes; the tag names evaluation settings other than the run's own

No TensorFlow here (but through storage.py for a URL): the settings (config.py) validate a log
file name against these names, and listing checkpoints is a matter of file names.  (Checked on
TF 2.21: ``SaveV2`` writes ``<prefix>.data-00000-of-00001.tempstate<random>``, renames it, then
writes the index under a temporary name and renames that; a sharded save works in
``<prefix>_temp/`` first.  A killed save therefore leaves only temporary names, which
``remove_partial`` deletes.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import uuid

from vgg_keras import atomic, documents, runlock, storage
from vgg_keras.errors import UsageError

CONFIG_FILE = "config.json"
RECORDED = "run"  # config.json's key for what the run recorded; not a setting
METRICS_FILE = "metrics.jsonl"
STATE_FILE = "checkpoint"
CHECKPOINT_PREFIX = "model.ckpt"
BEST_FILE = "best_checkpoint.json"
LOCK_FILE = runlock.LOCK_FILE
EVAL_LOG = "eval.log"
EVAL_RESULTS = "eval_results"
EVAL_CURVE = "eval_curve"
EVAL_EVENTS = "eval"  # TensorBoard events of run_eval.py, beside training's
EVENTS_PREFIX = "events.out.tfevents."
RUNS_DIR = "runs"  # where --log_dir puts runs by default (runs/vgg16, runs/demo)
# Names a --log_name must not take (it would be appended to one of them).
OWN_NAMES = (CONFIG_FILE, METRICS_FILE, STATE_FILE, BEST_FILE, LOCK_FILE, EVAL_LOG, EVAL_EVENTS)
OWN_PREFIXES = (CHECKPOINT_PREFIX, EVENTS_PREFIX, EVAL_RESULTS, EVAL_CURVE, ".")

_INDEX = re.compile(rf"^({re.escape(CHECKPOINT_PREFIX)}-(\d+))\.index$")
_FILE = re.compile(rf"{re.escape(CHECKPOINT_PREFIX)}-(\d+)\.(index|data-\d+-of-\d+|meta)")
_DATA = re.compile(rf"{re.escape(CHECKPOINT_PREFIX)}-(\d+)\.data-\d+-of-\d+")
# Temporary names of an unfinished save (see the module docstring).
_PARTIAL = re.compile(
    rf"{re.escape(CHECKPOINT_PREFIX)}-\d+(\..*\.tempstate\d*|_temp.*)|checkpoint\.tmp\w+"
)


def is_own_name(name: str) -> bool:
    """True for a file name the run itself writes (a log file may not take it)."""
    return name in OWN_NAMES or name.startswith(OWN_PREFIXES)  # "." covers "." and ".."


def results_name(tag: str = "", suffix: str = ".json") -> str:
    """``eval_results.json``, or ``eval_results.<tag>.json`` for other evaluation settings."""
    return f"{EVAL_RESULTS}{'.' + tag if tag else ''}{suffix}"


def curve_name(tag: str = "") -> str:
    return f"{EVAL_CURVE}{'.' + tag if tag else ''}.png"


def per_class_name(step: int, tag: str = "") -> str:
    """The stem of one checkpoint's per-class files: ``eval_results[.<tag>].step<N>``."""
    return results_name(tag, f".step{step}")


# ---------------------------------------------------------------------------------------------
# Checkpoints, by name


def checkpoint_step(path: str) -> int:
    """The global step in a ``model.ckpt-<step>`` prefix."""
    match = re.search(r"-(\d+)$", path)
    if not match:
        raise UsageError(f"{path}: not a model.ckpt-<step> checkpoint prefix")
    return int(match.group(1))


def list_checkpoints(folder: str) -> list[str]:
    """Every complete ``model.ckpt-N`` prefix in ``folder``, in step order."""
    names = storage.listdir(folder) if storage.isdir(folder) else []
    found = sorted((int(match[2]), match[1]) for match in map(_INDEX.match, names) if match)
    return [os.path.join(folder, prefix) for _, prefix in found]


def latest_checkpoint(folder: str) -> str | None:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def checkpoint_prefix(folder: str, step: int) -> str:
    return os.path.join(folder, f"{CHECKPOINT_PREFIX}-{step}")


def resolve_checkpoint(path: str, every: bool = False) -> list[str]:
    """The checkpoints a path names: a ``model.ckpt-N`` prefix, or a folder's newest (all of
    them with ``every``); a one-line UsageError when there are none."""
    path = storage.normpath(path)
    if storage.isdir(path):
        found = list_checkpoints(path)
        if not found:
            raise UsageError(f"no model.ckpt-* checkpoints in {path}")
        return found if every else found[-1:]
    if not storage.exists(path + ".index"):
        raise UsageError(f"checkpoint not found: {path} (neither a folder nor {path}.index)")
    if every:
        raise UsageError(f"{path} is one checkpoint; name its folder to evaluate every one")
    return [path]


def remove_partial(folder: str) -> list[str]:
    """Delete what interrupted saves left in ``folder``: temporary data and index files,
    ``_temp`` folders of sharded saves, temporary copies of the state file, and the data files
    of a checkpoint older than the newest whose index is gone (a rotation cut short between
    its two deletions).  Only while no trainer writes there (hold the run lock)."""
    complete = [checkpoint_step(path) for path in list_checkpoints(folder)]
    removed = []
    for path in storage.glob(os.path.join(storage.escape(folder), "*")):
        name = os.path.basename(path)
        data = _DATA.fullmatch(name)
        step = int(data[1]) if data else None
        rotated = step is not None and step not in complete and step < max(complete, default=-1)
        if rotated or _PARTIAL.fullmatch(name):
            storage.rmtree(path) if storage.isdir(path) else storage.remove(path)
            removed.append(name)
    return removed


def remove_oldest(folder: str, keep: int, protect: int | None = None) -> list[str]:
    """Delete the complete checkpoints of ``folder`` but the newest ``keep`` and the one at
    step ``protect`` (the best), index first, then data and meta.  Only while no other
    trainer writes there; returns the prefixes removed."""
    found = [p for p in list_checkpoints(folder) if checkpoint_step(p) != protect]
    doomed = found[:-keep] if keep > 0 else []
    for prefix in doomed:
        rest = sorted(storage.glob(storage.escape(prefix) + ".data-*")) + [prefix + ".meta"]
        for path in [prefix + ".index", *rest]:
            with contextlib.suppress(FileNotFoundError):
                storage.remove(path)
    return doomed


def state_file_target(folder: str) -> str | None:
    """The checkpoint TensorFlow's ``checkpoint`` state file names (joined to ``folder``)."""
    try:
        with storage.open(os.path.join(folder, STATE_FILE), encoding="utf-8") as f:
            text = f.read()
    except (OSError, ValueError):
        return None
    match = re.search(r'^model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"', text, re.M)
    return os.path.join(folder, match.group(1)) if match else None


# ---------------------------------------------------------------------------------------------
# config.json, the best checkpoint, the newest run


def write_config(folder: str, settings: dict, recorded: dict | None = None) -> None:
    """``<folder>/config.json``: the resolved settings, and what the run recorded."""
    document = {**settings, RECORDED: recorded} if recorded else settings
    atomic.write_text(
        os.path.join(folder, CONFIG_FILE), json.dumps(document, indent=2, sort_keys=True)
    )


def read_config(folder: str) -> dict:
    """The settings a run saved in ``<folder>/config.json`` ({} when there are none)."""
    saved = documents.read_json(os.path.join(folder, CONFIG_FILE), "run settings")
    saved.pop(RECORDED, None)
    return saved


def read_recorded(folder: str) -> dict:
    """What the run recorded in config.json: its counts (steps_per_epoch, ...) that are
    positive integers; a hand-edited value of another type is left out, as if not recorded."""
    return {k: v for k, v in _run_record_of(folder).items() if _is_count(v)}


def read_best(folder: str) -> dict | None:
    """best_checkpoint.json: {"step", "top1", "checkpoint"} of the best evaluation, or None
    when it is absent or its step or top-1 is not a number (a hand-edited file)."""
    best = documents.read_json(os.path.join(folder, BEST_FILE), "best checkpoint record")
    top1 = best.get("top1")
    is_number = isinstance(top1, (int, float)) and not isinstance(top1, bool)
    return best if _is_count(best.get("step")) and is_number else None


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def best_checkpoint(folder: str) -> str:
    """The checkpoint best_checkpoint.json names (the best validation top-1 of the run)."""
    best = read_best(folder)
    if best is None:
        raise UsageError(f"--best: {folder} has no {BEST_FILE} (train_and_evaluate writes it)")
    return resolve_checkpoint(checkpoint_prefix(folder, best["step"]))[0]


def write_best(folder: str, step: int, top1: float) -> None:
    record = {"checkpoint": f"{CHECKPOINT_PREFIX}-{step}", "step": step, "top1": top1}
    atomic.write_text(os.path.join(folder, BEST_FILE), json.dumps(record) + "\n")


def newest_run(runs_dir: str = RUNS_DIR) -> str:
    """The folder under ``runs_dir`` whose newest checkpoint was written last."""
    runs = []
    for name in storage.listdir(runs_dir) if storage.isdir(runs_dir) else []:
        latest = latest_checkpoint(os.path.join(runs_dir, name))
        if latest is not None:
            runs.append((storage.getmtime(latest + ".index"), os.path.join(runs_dir, name)))
    if not runs:
        raise UsageError(
            f"no run with checkpoints under {runs_dir}/ (in {os.getcwd()}): name one with "
            "--eval_dir DIR or --ckpt PATH"
        )
    return max(runs)[1]


# ---------------------------------------------------------------------------------------------
# How a run starts: decided once, from the folder's record and the flags, before any write


@dataclasses.dataclass(frozen=True)
class Start:
    """How a run starts: ``checkpoint`` it resumes from (None: step 0, from --restore_path,
    --weights or fresh weights), ``stream_step`` where its input stream goes on, ``record`` what
    config.json records of it (its ``id``, the counts, and ``history``: per start, the step its
    checkpoints continue from and where from) and ``notes`` to print."""

    checkpoint: str | None
    stream_step: int
    record: dict
    notes: tuple = ()


def prepare(config, counts: dict, cleanup: contextlib.ExitStack, chief: bool = True) -> Start:
    """Decide how the run starts (``decide``), then get log_dir ready: lock it (released when
    ``cleanup`` closes), delete what interrupted saves left and, with --overwrite, the previous
    run.  Workers other than the chief only read the chief's folder.  ``config`` is a
    config.Config (not imported: config.py reads this module's names)."""
    loop = config.loop
    if not chief and not loop.overwrite:
        return decide(config, counts, chief=False)
    if not chief:  # the chief is deleting the previous run: only --resume is read
        path = resolve_checkpoint(loop.resume)[0] if loop.resume else None
        return Start(path, checkpoint_step(path) if path else 0, {})
    lock = cleanup.enter_context(runlock.RunLock(loop.log_dir))
    if lock.stale_owner:
        owner = lock.stale_owner
        print(f"note: took over {lock.path} from pid {owner.get('pid')}, which is not running")
    try:
        remove_partial(loop.log_dir)
        start = decide(config, counts)
        doomed = _previous_run(loop.log_dir, loop.log_name) if loop.overwrite else []
        for path in doomed:
            storage.remove(path)
    except OSError as err:
        raise UsageError(f"--log_dir {loop.log_dir}: cannot write there ({err.strerror})") from err
    if doomed:
        print(f"--overwrite: deleted the previous run in {loop.log_dir} ({len(doomed)} files)")
    return start


def decide(config, counts: dict, chief: bool = True) -> Start:
    """How the run in --log_dir starts, from the folder's record and the flags; writes nothing.

    ``counts``: this run's steps_per_epoch, global_batch, train_images and replicas (a worker
    other than the ``chief`` reads a folder the chief may be writing).  A start touches only
    files a run of this program wrote: another config.json or ``checkpoint`` file there is
    refused, naming it.  A folder holding checkpoints is resumed from its newest (or
    --resume's, when it holds no later one); a --resume from elsewhere goes only into a folder
    holding no other history; a resume changes settings as config.RESUME says.  --overwrite
    deletes only a recorded run of this program's, never what the same command reads.
    """
    loop, log_dir = config.loop, config.loop.log_dir
    record = _run_record(log_dir)
    if loop.overwrite:
        _check_overwrite(loop, record)
        record = None
    held = [] if loop.overwrite else list_checkpoints(log_dir)
    if chief and record is None and not held and not loop.overwrite:  # nothing here is ours
        names = [os.path.basename(p) for p in _previous_run(log_dir, loop.log_name)]
        mine = [n for n in names if n != STATE_FILE and not n.startswith(EVENTS_PREFIX)]
        if mine:
            raise UsageError(f"{os.path.join(log_dir, mine[0])}: not a run's file: {_ASIDE}")
    newest = None if loop.overwrite else _resumable_checkpoint(log_dir)
    path = resolve_checkpoint(loop.resume)[0] if loop.resume else newest
    fresh = {"id": uuid.uuid4().hex[:12], **counts}
    if path is None:
        history = [{"step": 0, "global_batch": counts["global_batch"]}]
        return Start(None, 0, {**fresh, "history": history})
    step, source = checkpoint_step(path), os.path.dirname(path)
    inside = _inside(path, log_dir)
    later = [os.path.basename(p) for p in held if checkpoint_step(p) > step]
    source_id = _run_record_of(source).get("id")
    same = bool(record and record.get("id")) and record.get("id") == source_id
    if held and (later or not (inside or same)):
        what = "newer checkpoints" if inside else "a later step" if later else "another run's"
        raise UsageError(
            f"--resume {loop.resume}: --log_dir {log_dir} holds {what} ({(later or held)[0]}"
            f"{' ...' if len(later) > 1 else ''}): resume into another --log_dir, which the run "
            "then continues from this one's state"
        )
    where = f"--log_dir {log_dir}" if inside else f"--resume {loop.resume}"
    notes, changed, stream = _resume_changes(config, source, where, counts, step)
    if loop.restore_path or loop.weights:
        notes.insert(0, f"note: resuming from {path}; --restore_path and --weights start a run")
    entry = {"step": step, "from": os.path.basename(path) if inside else storage.abspath(path)}
    entry.update({"run": source_id, **changed} if source_id else changed)
    kept = record if inside and record and record.get("id") else {"id": fresh["id"]}
    history = [*(_history(log_dir) if kept is record else []), entry]
    return Start(path, stream, {"id": kept["id"], **counts, "history": history}, tuple(notes))


def _resume_changes(config, folder: str, where: str, counts: dict, step: int):
    """(notes, changes to record, the input stream's step) of resuming the run in ``folder`` at
    ``step`` with ``config``, as config.RESUME says; a change it refuses is a UsageError."""
    old = read_recorded(folder)
    counted = ("replicas", "train_images")
    moved = {n: (old[n], counts[n]) for n in counted if old.get(n, counts[n]) != counts[n]}
    changes = config.resume_changes(read_config(folder), os.path.join(folder, CONFIG_FILE), moved)
    notes, changed = [], {}
    batch, per_epoch = counts["global_batch"], counts["steps_per_epoch"]
    was_batch, was_epoch = old.get("global_batch", batch), old.get("steps_per_epoch", per_epoch)
    for name, was, now, kind in changes:
        if was_batch == batch and name in ("batch_size", "accumulation_steps", "replicas"):
            kind = "note"  # the same global batch, laid out otherwise: the same steps
        shown = f"{name}={plain(was)}, this run has {name}={plain(now)}"
        if kind == "fixed":
            raise UsageError(
                f"{where} holds a run with {shown} (use another --log_dir, or --overwrite to "
                "delete that run)"
            )
        if kind == "ask" and name not in config.loop.allow_change:
            raise UsageError(
                f"{where} holds a run with {shown}: a resume changes it only with "
                f"--allow_change {name}"
            )
        precision = f"the run was trained in {was}, it goes on in {now}"
        notes.append(f"note: {precision if name == 'precision' else where + ' had ' + shown}")
        changed.setdefault("changed", {})[name] = [plain(was), plain(now)]
    # The images drawn by ``step``: from the start of its history's segment, in that batch.
    since = next((e for e in reversed(_history(folder)) if e.get("step", 0) <= step), {})
    at, begin = since.get("stream_step", since.get("step", 0)), since.get("step", 0)
    images = (at + step - begin) * since.get("global_batch", was_batch)
    stream = images // batch
    changed.update(stream_step=stream, global_batch=batch)
    if (was_batch, was_epoch) != (batch, per_epoch):
        bounds = config.optimizer.boundary_steps(per_epoch)
        changed.update(steps_per_epoch=per_epoch, lr_boundary_steps=bounds)
        notes.append(
            f"note: global batch {was_batch} -> {batch}: the input goes on after "
            f"{images} images (step {stream} of the new stream); {per_epoch} steps per "
            f"epoch (were {was_epoch}): step {step} is epoch {step / per_epoch:.4g} of the "
            f"schedule (was {step / was_epoch:.4g}); piecewise boundaries at steps {bounds}"
        )
    return notes, changed, stream


def plain(value):
    """A setting's value as config.json holds it (a list for a tuple)."""
    return list(value) if isinstance(value, tuple) else value


def _inside(path: str, folder: str) -> bool:
    """True when the checkpoint ``path`` lies in ``folder``."""
    return storage.same_folder(os.path.dirname(path) or ".", folder)


def _history(folder: str) -> list[dict]:
    """The history config.json records in ``folder``: its well-formed entries (counts)."""
    history = _run_record_of(folder).get("history")
    keys = ("step", "stream_step", "global_batch")
    return [
        e
        for e in (history if isinstance(history, list) else [])
        if isinstance(e, dict) and all(_is_count(e[k]) or e[k] == 0 for k in keys if k in e)
    ]


def _run_record_of(folder: str) -> dict:
    """The run record config.json holds in ``folder`` ({}: none, or not a record)."""
    record = documents.read_json(os.path.join(folder, CONFIG_FILE), "run settings").get(RECORDED)
    return record if isinstance(record, dict) else {}


def _run_record(folder: str) -> dict | None:
    """config.json's run record in ``folder`` (None without a config.json).  A config.json
    without one, or a ``checkpoint`` file that names no model.ckpt-<step>, is not this
    program's: refused, naming it (a start would replace it)."""
    path, state = os.path.join(folder, CONFIG_FILE), os.path.join(folder, STATE_FILE)
    record = documents.read_json(path, "run settings").get(RECORDED)
    if storage.exists(path) and not isinstance(record, dict):
        raise UsageError(f"{path}: not a run's config.json (no {RECORDED!r} record): {_ASIDE}")
    target = os.path.basename(state_file_target(folder) or "")
    if storage.exists(state) and not re.fullmatch(rf"{CHECKPOINT_PREFIX}-\d+", target):
        raise UsageError(f"{state}: not a state file naming a model.ckpt-<step>: {_ASIDE}")
    return record  # None without a config.json: read_json gave {}


_ASIDE = "a run would replace it; move it away, or use another --log_dir"


def _check_overwrite(loop, record) -> None:
    """--overwrite deletes a run this program recorded, and nothing the same command reads."""
    for flag in ("resume", "restore_path"):
        given = getattr(loop, flag)
        if given and _inside(resolve_checkpoint(given)[0], loop.log_dir):
            raise UsageError(f"--{flag} {given}: --overwrite would delete it (it is in --log_dir)")
    doomed = _previous_run(loop.log_dir, loop.log_name)
    if doomed and record is None:
        raise UsageError(
            f"{doomed[0]}: --overwrite deletes only a run this program recorded, and "
            f"{loop.log_dir} has no config.json: move it away, or use another --log_dir"
        )


def _resumable_checkpoint(log_dir: str) -> str | None:
    """The newest complete checkpoint; refuses a folder whose checkpoints are all broken."""
    latest = latest_checkpoint(log_dir)
    named = state_file_target(log_dir)
    if named and not storage.exists(named + ".index"):
        if latest is None:
            raise UsageError(
                f"{os.path.join(log_dir, STATE_FILE)} names {named}, which is missing, and no "
                "other checkpoint is complete: put it back, or start afresh with --overwrite"
            )
        print(f"warning: {named} (the newest checkpoint on record) is missing; using {latest}")
    names = storage.listdir(log_dir) if storage.isdir(log_dir) else []
    leftovers = sorted(n for n in names if _FILE.fullmatch(n))  # checkpoint files, complete or not
    if latest is None and leftovers:
        raise UsageError(
            f"--log_dir {log_dir} holds {leftovers[-1]} but no complete checkpoint (no .index "
            "file): start afresh with --overwrite"
        )
    return latest


def _previous_run(log_dir: str, log_name: str) -> list[str]:
    """The files a run writes in ``log_dir`` (checkpoints, logs, metrics, events, evaluation
    results), nothing else (not a ``model.ckpt-best.txt`` of the user's)."""
    names = storage.listdir(log_dir) if storage.isdir(log_dir) else []
    owned = {CONFIG_FILE, METRICS_FILE, STATE_FILE, BEST_FILE, EVAL_LOG, log_name}
    results = re.compile(rf"({EVAL_RESULTS}|{EVAL_CURVE})(\.[\w.-]+)?\.(json|csv|png)")
    doomed = [
        os.path.join(log_dir, name)
        for name in sorted(names)
        if name in owned
        or _FILE.fullmatch(name)
        or results.fullmatch(name)
        or name.startswith(EVENTS_PREFIX)
    ]
    events = os.path.join(log_dir, EVAL_EVENTS)
    found = storage.listdir(events) if storage.isdir(events) else []
    doomed += [os.path.join(events, n) for n in found if n.startswith(EVENTS_PREFIX)]
    return [path for path in doomed if storage.isfile(path)]
