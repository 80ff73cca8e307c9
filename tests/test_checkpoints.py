"""Checkpoints: listing (complete ones only, in step order), resolving a folder or prefix, the
messages for missing/corrupt/incompatible ones, and restoring with --restore_exclude for
fine-tuning (also through a real training run).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from vgg_keras import checkpoints
from vgg_keras.compat import tf, v1
from vgg_keras.errors import UsageError
from vgg_keras.model import build_vgg
from vgg_keras.reporting import read_metrics


def save_tiny_checkpoints(folder: str, steps: list[int]) -> None:
    """Real ``model.ckpt-<step>`` files of a one-variable graph."""
    with tf.Graph().as_default() as graph:
        v1.Variable([1.0, 2.0], name="w")
        saver = v1.train.Saver(max_to_keep=None)
        init = v1.global_variables_initializer()
    with v1.Session(graph=graph) as sess, graph.as_default():
        sess.run(init)
        for step in steps:
            saver.save(sess, os.path.join(folder, checkpoints.PREFIX), global_step=step)


def test_list_checkpoints_orders_by_step_and_skips_incomplete_ones(tmp_path):
    save_tiny_checkpoints(str(tmp_path), [100, 9, 10])
    # A save killed before its index was written leaves only the data file.
    data = next(n for n in os.listdir(tmp_path) if n.startswith("model.ckpt-100.data"))
    os.rename(tmp_path / data, tmp_path / data.replace("-100.", "-200."))
    (tmp_path / "model.ckpt-300.index.tempstate123").write_bytes(b"")
    (tmp_path / "other.ckpt-400.index").write_bytes(b"")
    found = checkpoints.list_checkpoints(str(tmp_path))
    assert found == [str(tmp_path / f"model.ckpt-{s}") for s in (9, 10, 100)]
    assert checkpoints.latest_checkpoint(str(tmp_path)) == str(tmp_path / "model.ckpt-100")
    assert checkpoints.list_checkpoints(str(tmp_path / "missing")) == []
    assert checkpoints.latest_checkpoint(str(tmp_path / "missing")) is None


def test_resolve_takes_a_folder_or_a_prefix(tmp_path):
    save_tiny_checkpoints(str(tmp_path), [3, 12])
    assert checkpoints.resolve(str(tmp_path)) == str(tmp_path / "model.ckpt-12")
    assert checkpoints.resolve(str(tmp_path / "model.ckpt-3")) == str(tmp_path / "model.ckpt-3")
    assert checkpoints.checkpoint_step(str(tmp_path / "model.ckpt-3")) == 3


def test_resolve_and_step_errors_name_the_path(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"no model\.ckpt-\* checkpoints in .*empty"):
        checkpoints.resolve(str(tmp_path / "empty"))
    with pytest.raises(UsageError, match=r"checkpoint not found: .*model\.ckpt-7 \(no model"):
        checkpoints.resolve(str(tmp_path / "model.ckpt-7"))
    with pytest.raises(UsageError, match="not a model.ckpt-<step>"):
        checkpoints.checkpoint_step(str(tmp_path / "weights.h5"))


def test_a_corrupt_checkpoint_is_a_usage_error(tmp_path):
    save_tiny_checkpoints(str(tmp_path), [5])
    (tmp_path / "model.ckpt-5.index").write_bytes(b"not a checkpoint index")
    with pytest.raises(UsageError, match=r"model\.ckpt-5: unreadable checkpoint"):
        checkpoints.variable_shapes(str(tmp_path / "model.ckpt-5"))


# ---------------------------------------------------------------------------------------------
# Compatibility and restore_subset, against a real training checkpoint (VGG16, 10 classes)


@pytest.fixture(scope="module")
def source(train_tiny, tmp_path_factory) -> str:
    """The checkpoint prefix of 2 training steps of the tiny VGG16 on the 10 demo classes."""
    log_dir = tmp_path_factory.mktemp("source")
    assert train_tiny(log_dir, max_train_steps=2)[0] == 0
    return checkpoints.latest_checkpoint(str(log_dir))


def restore_into(source: str, arch: str, class_num: int, exclude: list[str]):
    """Fresh tiny model of ``arch``/``class_num``; returns (restored names, before, after)."""
    with tf.Graph().as_default() as graph:
        model = build_vgg(arch, class_num, 32, 0.0625, 0.0, weight_seed=7)
        init = v1.global_variables_initializer()
        graph.finalize()  # as in training: restoring must not add ops
    with v1.Session(graph=graph) as sess:
        sess.run(init)
        before = dict(zip([v.op.name for v in model.weights], sess.run(model.weights)))
        with graph.as_default():
            names = checkpoints.restore_subset(sess, source, model.weights, exclude)
        after = dict(zip([v.op.name for v in model.weights], sess.run(model.weights)))
    return names, before, after


def test_restore_subset_leaves_excluded_layers_freshly_initialised(source):
    names, before, after = restore_into(source, "vgg16", 12, ["predictions"])
    stored = tf.train.load_checkpoint(source)
    assert len(names) == 30 and not any(n.startswith("predictions") for n in names)
    for name in names:
        np.testing.assert_array_equal(after[name], stored.get_tensor(name), err_msg=name)
        if name.endswith("kernel"):  # (biases start at zero in both)
            assert not np.array_equal(after[name], before[name]), f"{name} was not restored"
    for name in ("predictions/kernel", "predictions/bias"):
        np.testing.assert_array_equal(after[name], before[name])
    assert after["predictions/kernel"].shape == (256, 12)


def test_restore_subset_shape_mismatch_names_the_variable_and_the_flag(source):
    with pytest.raises(
        UsageError, match=r"predictions/kernel is \[256, 10\], model needs \[256, 12\]"
    ):
        restore_into(source, "vgg16", 12, [])


def test_restore_subset_rejects_an_exclude_scope_matching_nothing(source):
    with pytest.raises(UsageError, match="--restore_exclude predictons: the model has no such"):
        restore_into(source, "vgg16", 10, ["predictons"])


def test_restore_subset_names_a_variable_the_checkpoint_lacks(source):
    with pytest.raises(UsageError, match="has no variable block3_conv4/kernel"):
        restore_into(source, "vgg19", 10, ["predictions"])


def test_check_compatible_describes_both_networks(source):
    with tf.Graph().as_default():
        model = build_vgg("vgg19", 10, 32, 0.0625)
    with pytest.raises(UsageError, match="checkpoint has vgg16 with 10 classes, model is vgg19"):
        checkpoints.check_compatible(source, model.weights)


def test_training_with_restore_path_fine_tunes_from_another_run(source, train_tiny, tmp_path):
    code, _ = train_tiny(
        tmp_path, class_num=12, restore_path=os.path.dirname(source), max_train_steps=2
    )
    assert code == 0
    with open(tmp_path / "train.log") as f:
        assert f"initialised 30 variables from {os.path.dirname(source)}" in f.read()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2], "a new run: steps from 1"
    stored = tf.train.load_checkpoint(checkpoints.latest_checkpoint(str(tmp_path)))
    assert stored.get_tensor("predictions/kernel").shape == (256, 12)
    assert "predictions/kernel/Momentum" in stored.get_variable_to_shape_map()


@pytest.mark.parametrize("relative", [False, True])
def test_state_file_target_names_the_newest_save(tmp_path, monkeypatch, relative):
    monkeypatch.chdir(tmp_path)
    folder = "run" if relative else str(tmp_path / "run")  # `make train` passes runs/demo
    save_tiny_checkpoints(folder, [4, 8])
    assert checkpoints.state_file_target(folder) == os.path.join(folder, "model.ckpt-8")
