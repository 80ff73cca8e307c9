"""The run folder: checkpoint files by name (complete ones only, in step order), resolving a path,
rotation that keeps the best, the state file, config.json with what the run recorded, and
getting a folder ready (a failed start never blocks a corrected command)."""

from __future__ import annotations

import contextlib
import json
import os

import pytest

from vgg_keras import rundir
from vgg_keras.compat import tf, v1
from vgg_keras.config import resolve
from vgg_keras.errors import UsageError


def save_tiny_checkpoints(folder: str, steps: list[int]) -> None:
    """Real ``model.ckpt-<step>`` files of a one-variable graph."""
    with tf.Graph().as_default() as graph:
        v1.Variable([1.0, 2.0], name="w")
        saver = v1.train.Saver(max_to_keep=None)
        init = v1.global_variables_initializer()
    with v1.Session(graph=graph) as sess, graph.as_default():
        sess.run(init)
        for step in steps:
            saver.save(sess, os.path.join(folder, rundir.CHECKPOINT_PREFIX), global_step=step)


def test_list_checkpoints_orders_by_step_and_skips_incomplete_ones(tmp_path):
    save_tiny_checkpoints(str(tmp_path), [100, 9, 10])
    # A save killed before its index was written leaves only the data file.
    data = next(n for n in os.listdir(tmp_path) if n.startswith("model.ckpt-100.data"))
    os.rename(tmp_path / data, tmp_path / data.replace("-100.", "-200."))
    (tmp_path / "model.ckpt-300.index.tempstate123").write_bytes(b"")
    (tmp_path / "other.ckpt-400.index").write_bytes(b"")
    found = rundir.list_checkpoints(str(tmp_path))
    assert found == [str(tmp_path / f"model.ckpt-{s}") for s in (9, 10, 100)]
    assert rundir.latest_checkpoint(str(tmp_path)) == str(tmp_path / "model.ckpt-100")
    assert rundir.list_checkpoints(str(tmp_path / "missing")) == []
    assert rundir.latest_checkpoint(str(tmp_path / "missing")) is None


def test_resolve_takes_a_folder_or_a_prefix(tmp_path):
    save_tiny_checkpoints(str(tmp_path), [3, 12])
    prefix = str(tmp_path / "model.ckpt-3")
    assert rundir.resolve_checkpoint(str(tmp_path)) == [str(tmp_path / "model.ckpt-12")]
    assert rundir.resolve_checkpoint(str(tmp_path), every=True) == [prefix, prefix[:-1] + "12"]
    assert rundir.resolve_checkpoint(prefix) == [prefix]
    assert rundir.checkpoint_step(prefix) == 3


def test_resolve_and_step_errors_name_the_path(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"^no model\.ckpt-\* checkpoints in .*empty$"):
        rundir.resolve_checkpoint(str(tmp_path / "empty"))
    with pytest.raises(UsageError, match=r"^checkpoint not found: .*model\.ckpt-7 \(neither"):
        rundir.resolve_checkpoint(str(tmp_path / "model.ckpt-7"))
    save_tiny_checkpoints(str(tmp_path), [5])
    with pytest.raises(UsageError, match="is one checkpoint; name its folder"):
        rundir.resolve_checkpoint(str(tmp_path / "model.ckpt-5"), every=True)
    with pytest.raises(UsageError, match="not a model.ckpt-<step>"):
        rundir.checkpoint_step(str(tmp_path / "weights.h5"))


def test_remove_oldest_keeps_the_newest_and_the_best(tmp_path):
    save_tiny_checkpoints(str(tmp_path), [1, 2, 3, 4, 5])
    removed = rundir.remove_oldest(str(tmp_path), keep=2, protect=2)
    assert [rundir.checkpoint_step(p) for p in removed] == [1, 3]
    steps = [rundir.checkpoint_step(p) for p in rundir.list_checkpoints(str(tmp_path))]
    assert steps == [2, 4, 5]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(("model.ckpt-1.", "model.ckpt-3."))]


@pytest.mark.parametrize("relative", [False, True])
def test_state_file_target_names_the_newest_save(tmp_path, monkeypatch, relative):
    monkeypatch.chdir(tmp_path)
    folder = "run" if relative else str(tmp_path / "run")  # `make train` passes runs/demo
    save_tiny_checkpoints(folder, [4, 8])
    assert rundir.state_file_target(folder) == os.path.join(folder, "model.ckpt-8")
    (tmp_path / "run" / "checkpoint").write_bytes(b"\xff\xfe garbage")
    assert rundir.state_file_target(folder) is None


def test_config_json_holds_the_settings_and_what_the_run_recorded(tmp_path):
    config = resolve("demo", {"log_dir": str(tmp_path)})
    rundir.write_config(str(tmp_path), config.flat(), {"steps_per_epoch": 44})
    assert rundir.read_config(str(tmp_path)) == config.flat()
    assert rundir.read_recorded(str(tmp_path)) == {"steps_per_epoch": 44}
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(
        UsageError, match="config.json: unreadable run settings \\(expected a mapping, found a list"
    ):
        rundir.read_config(str(tmp_path))


def test_own_names_cover_what_a_run_writes():
    for name in ("config.json", "metrics.jsonl", "train.lock", "checkpoint", "eval.log", "eval"):
        assert rundir.is_own_name(name), name
    for name in (rundir.results_name("crops10", ".csv"), rundir.curve_name(), "model.ckpt-3.index"):
        assert rundir.is_own_name(name), name
    assert not rundir.is_own_name("vgg16.log")


COUNTS = {"steps_per_epoch": 40, "global_batch": 8, "train_images": 320, "replicas": 1}


def _prepare(config, counts=None) -> str | None:
    with contextlib.ExitStack() as stack:
        return rundir.prepare(config, {**COUNTS, **(counts or {})}, stack).checkpoint


def test_a_folder_without_a_checkpoint_never_blocks_a_corrected_command(tmp_path):
    """A start that failed before its first checkpoint left its config.json behind."""
    failed = resolve("demo", {"log_dir": str(tmp_path), "image_size": 64})
    rundir.write_config(str(tmp_path), failed.flat(), COUNTS)
    corrected = resolve("demo", {"log_dir": str(tmp_path)})
    assert _prepare(corrected) is None


def test_another_network_over_a_checkpoint_is_refused_reading_its_values_typed(tmp_path):
    config = resolve("demo", {"log_dir": str(tmp_path)})
    save_tiny_checkpoints(str(tmp_path), [3])
    saved = {**config.flat(), "image_size": "32", "run": COUNTS}  # a hand-edited config.json
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert _prepare(config) == str(tmp_path / "model.ckpt-3")
    saved["arch"] = "vgg19"
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(UsageError, match="holds a run with arch=vgg19, this run has arch=vgg16"):
        _prepare(config)
    (tmp_path / "config.json").write_text(json.dumps({**saved, "image_size": None}))
    with pytest.raises(UsageError, match=r"config.json: image_size: must be given"):
        _prepare(config)


def test_a_log_dir_that_is_a_file_is_named_so(tmp_path):
    (tmp_path / "run").write_text("")
    config = resolve("demo", {"log_dir": str(tmp_path / "run")})
    with pytest.raises(UsageError, match="run: a file, not a folder"):
        _prepare(config)


def test_hand_edited_records_of_the_wrong_type_count_as_absent(tmp_path):
    folder = str(tmp_path)
    rundir.write_config(folder, {"arch": "vgg16"}, {"steps_per_epoch": "x", "global_batch": 8})
    assert rundir.read_recorded(folder) == {"global_batch": 8}
    for top1 in ("x", None, True):
        (tmp_path / rundir.BEST_FILE).write_text(json.dumps({"step": 4, "top1": top1}))
        assert rundir.read_best(folder) is None
    (tmp_path / rundir.BEST_FILE).write_text(json.dumps({"step": 4, "top1": 0.5}))
    assert rundir.read_best(folder)["step"] == 4


def test_a_config_json_nested_too_deeply_is_one_line(tmp_path):
    (tmp_path / rundir.CONFIG_FILE).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UsageError, match="config.json: unreadable run settings") as err:
        rundir.read_config(str(tmp_path))
    assert "\n" not in str(err.value)
