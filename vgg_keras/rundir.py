"""A run's folder (``--log_dir``): its config.json, the network it holds, getting it ready.

Training, evaluation, export and prediction all read a run through here, so none of them has
to import another's code to find out which network a checkpoint folder holds.
"""

from __future__ import annotations

import contextlib
import os
import re

from vgg_keras import atomic, checkpoints, runlock
from vgg_keras.config import NETWORK_KEYS, Config
from vgg_keras.data import info
from vgg_keras.errors import UsageError
from vgg_keras.reporting import METRICS_FILE, read_metrics

CONFIG_FILE = "config.json"
RUNS_DIR = "runs"  # where --log_dir puts runs by default (runs/vgg16, runs/demo)
_CHECKPOINT_FILE = re.compile(rf"{re.escape(checkpoints.PREFIX)}-\d+\.(index|data-\d+-of-\d+)")
_EVENTS = "events.out.tfevents."
# What run_eval.py writes into the run folder by default (evaluation.py's names).
_EVAL_FILES = ("eval.log", "eval_results.json", "eval_results.csv", "eval_curve.png")


def write_config(config: Config, folder: str | None = None) -> None:
    """``<folder>/config.json`` (default: the run's log_dir): the resolved settings."""
    atomic.write_text(os.path.join(folder or config.log_dir, CONFIG_FILE), config.to_json())


def read_config(folder: str) -> dict:
    """The settings a run saved in ``<folder>/config.json`` ({} when there are none)."""
    return info.read_json(os.path.join(folder, CONFIG_FILE), "run settings")


def newest_run(runs_dir: str = RUNS_DIR) -> str:
    """The folder under ``runs_dir`` whose newest checkpoint was written last."""
    runs = []
    if os.path.isdir(runs_dir):
        for name in sorted(os.listdir(runs_dir)):
            latest = checkpoints.latest_checkpoint(os.path.join(runs_dir, name))
            if latest is not None:
                runs.append((os.path.getmtime(latest + ".index"), os.path.join(runs_dir, name)))
    if not runs:
        raise UsageError(
            f"no run with checkpoints under {runs_dir}/ (in {os.getcwd()}): name one with "
            "--eval_dir DIR or --ckpt PATH"
        )
    return max(runs)[1]


def logged_steps_per_epoch(folder: str) -> float | None:
    """Steps per epoch as the run's training logged them (its global batch over all replicas),
    from the newest training line of ``<folder>/metrics.jsonl``; None without one."""
    if not os.path.exists(os.path.join(folder, METRICS_FILE)):
        return None
    try:
        lines = [r for r in read_metrics(folder) if "fps" in r and r.get("epoch") and r["step"]]
    except (OSError, ValueError):
        return None
    return lines[-1]["step"] / lines[-1]["epoch"] if lines else None


def prepare(config: Config, cleanup: contextlib.ExitStack) -> str | None:
    """Lock log_dir for this run, check it against the run, write config.json; returns the
    checkpoint to resume from.

    The lock is released when ``cleanup`` closes.  Never starts afresh over a run it cannot
    resume (another network's config.json, checkpoint files without a complete checkpoint):
    that is refused unless ``--overwrite``, which deletes the previous run first.  Leftovers of
    interrupted saves are deleted.
    """
    log_dir = config.log_dir
    lock = cleanup.enter_context(runlock.RunLock(log_dir))
    if lock.stale_owner:
        owner = lock.stale_owner
        print(f"note: took over {lock.path} from pid {owner.get('pid')}, which is not running")
    try:
        checkpoints.remove_partial(log_dir)
        if config.overwrite:
            _remove_previous_run(config)
        _check_network(config, read_config(log_dir))
        latest = _resumable_checkpoint(log_dir)
        if latest is None:  # else write_config, once the checkpoint has been restored
            write_config(config)
    except OSError as err:
        raise UsageError(f"--log_dir {log_dir}: cannot write there ({err.strerror})") from err
    return latest


def _check_network(config: Config, previous: dict) -> None:
    changed = [k for k in NETWORK_KEYS if k in previous and previous[k] != getattr(config, k)]
    if changed:
        key = changed[0]
        raise UsageError(
            f"--log_dir {config.log_dir} holds a run with {key}={previous[key]}, this run has "
            f"{key}={getattr(config, key)} (use another --log_dir, or --overwrite to delete "
            "that run)"
        )


def _resumable_checkpoint(log_dir: str) -> str | None:
    """The newest complete checkpoint; refuses a folder whose checkpoints are all broken."""
    latest = checkpoints.latest_checkpoint(log_dir)
    named = checkpoints.state_file_target(log_dir)
    if named and not os.path.exists(named + ".index"):
        if latest is None:
            raise UsageError(
                f"{os.path.join(log_dir, 'checkpoint')} names {named}, which is missing, and "
                "no other checkpoint is complete: put it back, or start afresh with --overwrite"
            )
        print(f"warning: {named} (the newest checkpoint on record) is missing; using {latest}")
    leftovers = [n for n in os.listdir(log_dir) if _CHECKPOINT_FILE.fullmatch(n)]
    if latest is None and leftovers:
        raise UsageError(
            f"--log_dir {log_dir} holds {sorted(leftovers)[-1]} but no "
            "complete checkpoint (no .index file): start afresh with --overwrite"
        )
    return latest


def _remove_previous_run(config: Config) -> None:
    """--overwrite: delete the checkpoints, logs, metrics, events and evaluation results of the
    run in log_dir; only files of the names a run writes (``model.ckpt-<step>.index`` and
    ``.data-*``, not a ``model.ckpt-best.txt`` of the user's)."""
    log_dir = config.log_dir
    names = os.listdir(log_dir) if os.path.isdir(log_dir) else []
    owned = (
        "checkpoint",
        CONFIG_FILE,
        METRICS_FILE,
        config.log_name,
        *_EVAL_FILES,
    )
    doomed = [
        os.path.join(log_dir, name)
        for name in names
        if name in owned or _CHECKPOINT_FILE.fullmatch(name) or name.startswith(_EVENTS)
    ]
    eval_events = os.path.join(log_dir, "eval")
    if os.path.isdir(eval_events):
        doomed += [
            os.path.join(eval_events, n) for n in os.listdir(eval_events) if n.startswith(_EVENTS)
        ]
    removed = 0
    for path in doomed:
        if os.path.isfile(path):
            os.remove(path)
            removed += 1
    if removed:
        print(f"--overwrite: deleted the previous run in {config.log_dir} ({removed} files)")
