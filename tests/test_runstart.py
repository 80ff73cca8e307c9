"""How a run starts, decided once from the folder's record and the flags: a run id and the
lineage of its checkpoints in config.json, files that are not the program's left alone, no
history mixed into another, --overwrite never deleting what the command reads, and the table of
what a resume may change (config.RESUME), setting by setting."""

from __future__ import annotations

import contextlib
import json
import os

import pytest
from test_rundir import COUNTS, save_tiny_checkpoints

from vgg_keras import config as config_lib
from vgg_keras import rundir
from vgg_keras.config import RESUME, SETTINGS, resolve
from vgg_keras.errors import UsageError

RECORDED_COUNTS = ("replicas", "train_images")  # the table's rows that are no setting
BATCH_LAYOUT = ("batch_size", "accumulation_steps", "replicas")


def recorded_run(folder, steps=(4,), record=None, **settings):
    """A run folder as this program writes it: config.json with a run record, checkpoints."""
    config = resolve("demo", {"log_dir": str(folder), **settings})
    rundir.write_config(str(folder), config.flat(), record or {**COUNTS, "id": "r1"})
    save_tiny_checkpoints(str(folder), list(steps))
    return config


def start(config, **counts) -> rundir.Start:
    with contextlib.ExitStack() as stack:
        return rundir.prepare(config, {**COUNTS, **counts}, stack)


def snapshot(folder) -> dict:
    return {n: os.stat(os.path.join(folder, n)).st_mtime_ns for n in sorted(os.listdir(folder))}


def test_the_table_names_every_setting_once():
    names = [name for kind in RESUME.values() for name in kind]
    assert len(names) == len(set(names))
    assert set(names) == set(SETTINGS) | set(RECORDED_COUNTS)
    assert set(RESUME) == {"fixed", "ask", "note", "free"}


def _other(name: str, value, folder):
    """A valid value of ``name`` other than ``value``."""
    special = {
        "lr_values": (1.0, 0.1, 0.01, 0.001),
        "data_dir": "data/moved",
        "trainable_from": "fc1",
        "resume": str(folder / "model.ckpt-4"),
        "restore_path": str(folder / "model.ckpt-4"),
        "weights": "imagenet",
        "log_name": "other.log",
        "log_dir": str(folder),  # the folder itself: the same run
        "devices": ("cpu:0",),
        "restore_exclude": ("fc1",),
        "allow_change": ("lr",),
        "lr_boundaries": (1.0, 2.0, 3.0),
        "area_range": (0.5, 1.0),
        "aspect_ratio_range": (0.8, 1.2),
    }
    setting = SETTINGS[name]
    if name in special:
        return special[name]
    if setting.metadata["choices"]:
        return next(c for c in setting.metadata["choices"] if c != value)
    if setting.kind is bool:
        return not value
    if setting.kind is str:
        return "elsewhere"
    if value is None:
        return 4
    return value + 1 if setting.kind is int else (value / 2 if value else 0.5)


@pytest.mark.parametrize(
    ("name", "kind"), [(n, kind) for kind, names in RESUME.items() for n in names]
)
def test_a_resume_changes_each_setting_as_the_table_says(tmp_path, name, kind):
    base = recorded_run(tmp_path)
    before = snapshot(tmp_path)
    if name in RECORDED_COUNTS:
        changed, counts = base, {name: COUNTS[name] + 1}
    else:
        changed, counts = base.replace(**{name: _other(name, base.value(name), tmp_path)}), {}
    if name in BATCH_LAYOUT:  # they ask when the global batch changes
        counts["global_batch"] = 16
    if kind in ("fixed", "ask"):
        with pytest.raises(UsageError, match=rf"holds a run with {name}=") as err:
            start(changed, **counts)
        assert ("--overwrite" if kind == "fixed" else f"--allow_change {name}") in str(err.value)
        assert snapshot(tmp_path) == before
        if kind == "fixed":
            return
        changed = changed.replace(allow_change=(name,))
    decided = start(changed, **counts)
    if name == "overwrite":  # not a resume: a fresh run
        assert decided.checkpoint is None and decided.record["id"] != "r1"
        return
    assert decided.checkpoint == str(tmp_path / "model.ckpt-4")
    entry = decided.record["history"][-1]
    assert decided.record["id"] == "r1" and entry["step"] == 4
    if kind == "free":
        assert "changed" not in entry
        assert not [n for n in decided.notes if "note: resuming from" not in n]
    else:
        assert name in entry["changed"], entry
        said = name if name != "precision" else "the run was trained in fp32, it goes on in"
        assert any(said in note for note in decided.notes), decided.notes


@pytest.mark.parametrize("name", BATCH_LAYOUT)
def test_the_same_global_batch_laid_out_otherwise_goes_on_with_a_note(tmp_path, name):
    """16 images x 1 replica, 8 x 2, 4 x 2 x 2 micro-batches: the same steps."""
    base = recorded_run(tmp_path, batch_size=16)
    if name == "replicas":
        changed, counts = base.replace(batch_size=8), {"replicas": 2}
    else:
        changed, counts = base.replace(batch_size=8, accumulation_steps=2), {}
    decided = start(changed, **counts)
    assert decided.stream_step == 4
    assert decided.record["history"][-1]["changed"]["batch_size"] == [16, 8]
    assert any("batch_size=8" in note for note in decided.notes)


def test_an_allowed_batch_change_gives_position_epochs_and_boundaries_once(tmp_path):
    base = recorded_run(tmp_path, steps=[8], lr_schedule="piecewise", lr_boundaries=(2.0, 3.0))
    counts = {"global_batch": 16, "steps_per_epoch": 20}
    decided = start(base.replace(batch_size=64, allow_change=("batch_size",)), **counts)
    assert decided.stream_step == 4  # the 64 images drawn so far are 4 batches of 16
    entry = decided.record["history"][-1]
    assert entry["stream_step"] == 4 and entry["steps_per_epoch"] == 20
    assert entry["lr_boundary_steps"] == [40, 60]
    assert decided.record["global_batch"] == 16
    (note,) = [n for n in decided.notes if "global batch" in n]
    assert "global batch 8 -> 16: the input goes on after 64 images" in note
    assert "20 steps per epoch (were 40)" in note


def test_a_restart_after_an_allowed_batch_change_keeps_its_input_position(tmp_path):
    """Changed at step 8 (the stream at 4 batches of 16), restarted from step 12: 8 batches."""
    history = [{"step": 0, "global_batch": 8}, {"step": 8, "stream_step": 4, "global_batch": 16}]
    record = {**COUNTS, "global_batch": 16, "id": "r1", "history": history}
    config = recorded_run(tmp_path, steps=[8, 12], record=record, batch_size=64)
    decided = start(config, global_batch=16)
    assert decided.stream_step == 8 and not decided.notes
    older = start(config.replace(batch_size=32, allow_change=("batch_size",)), global_batch=8)
    assert older.stream_step == 16  # 128 images, in batches of 8


def test_allow_change_takes_only_what_a_resume_refuses():
    assert resolve("demo", {"allow_change": "batch_size,lr"}).loop.allow_change == (
        "batch_size",
        "lr",
    )
    with pytest.raises(UsageError, match=r"^--allow_change: arch: not one of replicas, "):
        resolve("demo", {"allow_change": "arch"})


def test_a_fresh_run_and_its_resumes_record_their_lineage(tmp_path):
    config = resolve("demo", {"log_dir": str(tmp_path)})
    fresh = start(config)
    assert fresh.checkpoint is None
    assert fresh.record["history"] == [{"step": 0, "global_batch": 8}]
    rundir.write_config(str(tmp_path), config.flat(), fresh.record)
    save_tiny_checkpoints(str(tmp_path), [4])
    resumed = start(config)
    assert resumed.record["id"] == fresh.record["id"]
    own = {"step": 4, "from": "model.ckpt-4", "run": fresh.record["id"]}
    own.update(stream_step=4, global_batch=8)
    assert resumed.record["history"] == [fresh.record["history"][0], own]


def test_a_run_folder_of_before_run_ids_resumes_and_gets_one(tmp_path):
    config = recorded_run(tmp_path, record=dict(COUNTS))
    decided = start(config)
    assert decided.checkpoint == str(tmp_path / "model.ckpt-4")
    assert decided.record["id"] and decided.record["history"] == [
        {"step": 4, "from": "model.ckpt-4", "stream_step": 4, "global_batch": 8}
    ]


@pytest.mark.parametrize("name", ["config.json", "checkpoint"])
def test_a_users_config_json_or_checkpoint_file_is_never_replaced(tmp_path, name):
    """No checkpoints, the user's own config.json or checkpoint file: refused, naming it."""
    (tmp_path / name).write_text('{"lr": 0.1}\n' if name == "config.json" else "my notes\n")
    before = (tmp_path / name).read_text()
    config = resolve("demo", {"log_dir": str(tmp_path)})
    for overwrite in (False, True):
        with pytest.raises(UsageError, match=rf"^{tmp_path / name}: not a .*move it away"):
            start(config.replace(overwrite=overwrite))
    assert (tmp_path / name).read_text() == before


@pytest.mark.parametrize("name", ["best_checkpoint.json", "train.log", "eval_results.csv"])
def test_a_users_file_of_a_runs_name_in_a_folder_without_a_run_is_left_alone(tmp_path, name):
    (tmp_path / name).write_text("mine\n")
    with pytest.raises(UsageError, match=rf"^{tmp_path / name}: not a run's file"):
        start(resolve("demo", {"log_dir": str(tmp_path)}))
    assert (tmp_path / name).read_text() == "mine\n"


def test_overwrite_never_deletes_what_the_command_reads(tmp_path):
    config = recorded_run(tmp_path, steps=[4, 8])
    before = snapshot(tmp_path)
    for flag in ("restore_path", "resume"):
        asked = config.replace(overwrite=True, **{flag: str(tmp_path / "model.ckpt-4")})
        with pytest.raises(UsageError, match=rf"^--{flag} .*: --overwrite would delete it"):
            start(asked)
        assert snapshot(tmp_path) == before


def test_overwrite_deletes_only_a_recorded_run(tmp_path):
    """Checkpoints without config.json (another program's): not the program's to delete."""
    save_tiny_checkpoints(str(tmp_path), [4])
    config = resolve("demo", {"log_dir": str(tmp_path), "overwrite": True})
    with pytest.raises(UsageError, match=r"--overwrite deletes only a run this program recorded"):
        start(config)
    assert rundir.list_checkpoints(str(tmp_path)) == [str(tmp_path / "model.ckpt-4")]


@pytest.mark.parametrize("other_steps", [[4], [12]])
def test_a_resume_from_elsewhere_never_mixes_into_another_history(tmp_path, other_steps):
    run, other = tmp_path / "run", tmp_path / "other"
    run.mkdir(), other.mkdir()
    config = recorded_run(run, steps=[4, 8])
    recorded_run(other, steps=other_steps, record={**COUNTS, "id": "r2"})
    before = snapshot(run)
    resume = str(other / f"model.ckpt-{other_steps[-1]}")
    with pytest.raises(UsageError, match=r"^--resume .*: --log_dir .* holds (a later|another)"):
        start(config.replace(resume=resume))
    assert snapshot(run) == before
    # into a folder of its own, the run goes on from there, and says where from
    fresh = tmp_path / "fresh"
    decided = start(config.replace(resume=resume, log_dir=str(fresh)))
    assert decided.record["id"] != "r2"
    step = other_steps[-1]
    entry = {"step": step, "from": os.path.abspath(resume), "run": "r2", "stream_step": step}
    assert decided.record["history"] == [{**entry, "global_batch": 8}]


# ---------------------------------------------------------------------------------------------
# The observed cases, as written


def test_resume_from_another_run_into_a_later_history_is_refused(train_tiny, tmp_path):
    run, other = tmp_path / "R", tmp_path / "OTHER"
    tiny = dict(batch_size=8, save_checkpoints_steps=4, image_size=32, width_multiplier=0.0625)
    assert train_tiny(run, max_train_steps=8, **tiny)[0] == 0
    assert train_tiny(other, max_train_steps=4, seed=1, **tiny)[0] == 0
    before = snapshot(run)
    with pytest.raises(UsageError, match=r"holds a later step \(model.ckpt-8\)"):
        train_tiny(run, resume=str(other / "model.ckpt-4"), max_train_steps=8, **tiny)
    assert snapshot(run) == before
    record = json.loads((run / "config.json").read_text())["run"]
    assert record["history"] == [{"step": 0, "global_batch": 8}]


def test_a_changed_batch_is_refused_then_asked_for(script_runner, demo_dir, tmp_path):
    common = ["--preset", "demo", "--mode", "train", "--width_multiplier", "0.0625"]
    common += ["--progress", "false", "--data_dir", demo_dir, "--log_dir", str(tmp_path)]
    assert script_runner("run_train.py", *common, "--max_train_steps", "2").returncode == 0
    before = (tmp_path / "config.json").read_text()
    more = [*common, "--max_train_steps", "4", "--batch_size", "16"]
    refused = script_runner("run_train.py", *more)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: --log_dir {tmp_path} holds a run with batch_size=32, this run has "
        "batch_size=16: a resume changes it only with --allow_change batch_size"
    )
    assert (tmp_path / "config.json").read_text() == before
    asked = script_runner("run_train.py", *more, "--allow_change", "batch_size")
    assert asked.returncode == 0, asked.stderr
    assert "note: global batch 32 -> 16: the input goes on after 64 images" in asked.stdout
    record = json.loads((tmp_path / "config.json").read_text())["run"]
    assert record["global_batch"] == 16
    assert record["history"][-1]["changed"] == {"batch_size": [32, 16]}
    assert record["history"][-1]["stream_step"] == 4
    assert config_lib.RESUME_KIND["batch_size"] == "ask"


TINY = dict(batch_size=8, save_checkpoints_steps=4, image_size=32, width_multiplier=0.0625)


def test_overwrite_from_a_checkpoint_of_the_run_it_deletes_is_refused(train_tiny, tmp_path):
    run = tmp_path / "ow"
    assert train_tiny(run, max_train_steps=4, **TINY)[0] == 0
    before = snapshot(run)
    given = str(run / "model.ckpt-4")
    with pytest.raises(UsageError, match=rf"^--restore_path {given}: --overwrite would delete"):
        train_tiny(run, overwrite=True, restore_path=given, max_train_steps=4, **TINY)
    assert snapshot(run) == before


def test_a_users_config_json_and_checkpoint_file_survive_a_start(train_tiny, tmp_path):
    mine = {"config.json": '{"lr": 0.5, "note": "mine"}\n', "checkpoint": "my notes\n"}
    for name, text in mine.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(UsageError, match=rf"^{tmp_path}/config.json: not a run's config.json"):
        train_tiny(tmp_path, max_train_steps=1, **TINY)
    assert {name: (tmp_path / name).read_text() for name in mine} == mine
    assert not rundir.list_checkpoints(str(tmp_path))
