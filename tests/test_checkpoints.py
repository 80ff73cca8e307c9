"""Checkpoints' variables: which network and layout a checkpoint holds (ours, or the reference's
``tf.compat.v1.layers`` names), the messages for corrupt, foreign and incompatible ones, and
restoring either layout, in whole or for fine-tuning with --restore_exclude (also through a
real training run)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import write_reference_checkpoint

from vgg_keras import checkpoints, rundir
from vgg_keras.api import build_vgg
from vgg_keras.compat import tf, v1
from vgg_keras.errors import UsageError
from vgg_keras.reporting import read_metrics


@pytest.fixture(scope="module")
def source(train_tiny, tmp_path_factory) -> str:
    """The checkpoint prefix of 2 training steps of the tiny VGG16 on the 10 demo classes."""
    log_dir = tmp_path_factory.mktemp("source")
    assert train_tiny(log_dir, max_train_steps=2)[0] == 0
    return rundir.latest_checkpoint(str(log_dir))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> str:
    """A reference-layout checkpoint of the same tiny VGG16 after 3 steps."""
    return write_reference_checkpoint(str(tmp_path_factory.mktemp("reference")), steps=3)


def tiny(arch: str = "vgg16", class_num: int = 10):
    return build_vgg(arch, class_num, 32, 0.0625, dense_init="he")


def restore_into(source: str, arch: str, class_num: int, exclude):
    """Fresh tiny model of ``arch``/``class_num``; returns (restored names, before, after)."""
    with tf.Graph().as_default() as graph:
        model = tiny(arch, class_num)
        init = v1.global_variables_initializer()
        graph.finalize()  # as in training: restoring must not add ops
    with v1.Session(graph=graph) as sess:
        sess.run(init)
        before = dict(zip([v.op.name for v in model.weights], sess.run(model.weights)))
        names = checkpoints.restore_subset(sess, source, model.weights, exclude)
        after = dict(zip([v.op.name for v in model.weights], sess.run(model.weights)))
    return names, before, after


def test_a_corrupt_checkpoint_is_a_usage_error(tmp_path, source):
    for name in os.listdir(os.path.dirname(source)):
        if name.startswith("model.ckpt-2."):
            data = open(os.path.join(os.path.dirname(source), name), "rb").read()
            (tmp_path / name).write_bytes(data)
    (tmp_path / "model.ckpt-2.index").write_bytes(b"not a checkpoint index")
    with pytest.raises(UsageError, match=r"model\.ckpt-2: unreadable checkpoint"):
        checkpoints.read_contents(str(tmp_path / "model.ckpt-2"))


def test_contents_say_the_layout_and_the_network(source, reference):
    ours, theirs = checkpoints.read_contents(source), checkpoints.read_contents(reference)
    assert (ours.layout, ours.arch.name) == ("ours", "vgg16")
    assert (theirs.layout, theirs.arch.name) == ("reference", "vgg16")
    expected = {"arch": "vgg16", "class_num": 10, "width_multiplier": 0.0625, "image_size": 32}
    assert ours.settings() == expected and theirs.settings() == expected
    assert (
        checkpoints.stored_name("block3_conv2/kernel/Momentum", theirs)
        == "conv2d_5/kernel/Momentum"
    )
    assert checkpoints.stored_name("predictions/bias", theirs) == "dense_2/bias"
    assert checkpoints.stored_name("global_step", theirs) == "global_step"


def test_a_checkpoint_of_neither_layout_is_one_line_naming_what_it_holds(tmp_path):
    with tf.Graph().as_default() as graph:
        v1.Variable([1.0], name="encoder/w")
        saver, init = v1.train.Saver(), v1.global_variables_initializer()
    with v1.Session(graph=graph) as sess, graph.as_default():
        sess.run(init)
        prefix = saver.save(sess, str(tmp_path / "model.ckpt"), global_step=1)
    with pytest.raises(UsageError) as err:
        checkpoints.read_contents(prefix)
    message = str(err.value)
    assert "not a VGG checkpoint" in message and "encoder/w" in message and "\n" not in message


@pytest.mark.parametrize("layout", ["ours", "reference"])
def test_restore_gives_the_model_the_stored_values_of_either_layout(source, reference, layout):
    path = source if layout == "ours" else reference
    contents = checkpoints.read_contents(path)
    stored = tf.train.load_checkpoint(path)
    with tf.Graph().as_default() as graph:
        model = tiny()
        init = v1.global_variables_initializer()
        graph.finalize()
    with v1.Session(graph=graph) as sess:
        sess.run(init)
        checkpoints.restore(sess, path, model)
        for variable, value in zip(model.weights, sess.run(model.weights)):
            name = checkpoints.stored_name(variable.op.name, contents)
            np.testing.assert_array_equal(value, stored.get_tensor(name), err_msg=name)


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


def test_restore_subset_takes_the_references_exclude_names(reference):
    """The reference's users exclude ``['dense_2','global_step']`` (its fc8 and step)."""
    names, before, after = restore_into(reference, "vgg16", 12, ["dense_2", "global_step"])
    assert len(names) == 30 and "dense_1/kernel" in names and "dense_2/kernel" not in names
    np.testing.assert_array_equal(after["predictions/kernel"], before["predictions/kernel"])
    stored = tf.train.load_checkpoint(reference)
    np.testing.assert_array_equal(after["fc2/kernel"], stored.get_tensor("dense_1/kernel"))


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


@pytest.mark.parametrize("layout", ["ours", "reference"])
def test_check_network_describes_both_networks(source, reference, layout):
    path = source if layout == "ours" else reference
    with tf.Graph().as_default():
        for arch, message in (
            ("vgg19", "checkpoint has vgg16 with 10 classes, model is vgg19 with 10 classes"),
            ("vgg16_bn", "checkpoint has vgg16 with 10 classes, model is vgg16_bn"),
        ):
            with pytest.raises(UsageError, match=message):
                checkpoints.check_network(checkpoints.read_contents(path), tiny(arch))


def test_restore_reports_the_optional_state_a_checkpoint_lacks(source):
    with tf.Graph().as_default() as graph:
        model = tiny()
        extra = v1.Variable(1.0, name="current_loss_scale")
        init = v1.global_variables_initializer()
    with v1.Session(graph=graph) as sess:
        sess.run(init)
        absent = checkpoints.restore(sess, source, model, optional=[extra])
        assert absent == [extra] and sess.run(extra) == 1.0


def test_training_with_restore_path_fine_tunes_from_another_run(source, train_tiny, tmp_path):
    code, _ = train_tiny(
        tmp_path, class_num=12, restore_path=os.path.dirname(source), max_train_steps=2
    )
    assert code == 0
    with open(tmp_path / "train.log") as f:
        assert f"initialised 30 variables from {source}" in f.read()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2], "a new run: steps from 1"
    stored = tf.train.load_checkpoint(rundir.latest_checkpoint(str(tmp_path)))
    assert stored.get_tensor("predictions/kernel").shape == (256, 12)
    assert "predictions/kernel/Momentum" in stored.get_variable_to_shape_map()


def test_a_cut_data_file_is_one_line_naming_the_checkpoint(source, tmp_path):
    """TF 2's reader raises IndexError ("Read less bytes than requested") for a .data file
    cut short; TF 1.15's a DataLossError: either is the same one line."""
    import shutil

    for name in os.listdir(os.path.dirname(source)):
        if name.startswith(os.path.basename(source) + "."):
            shutil.copy(os.path.join(os.path.dirname(source), name), tmp_path / name)
    copy = str(tmp_path / os.path.basename(source))
    os.truncate(copy + ".data-00000-of-00001", 100)
    names = sorted(checkpoints.variable_shapes(copy))
    with pytest.raises(UsageError, match=f"^{copy}: unreadable checkpoint") as err:
        checkpoints.read_values(copy, names)
    assert "\n" not in str(err.value)
