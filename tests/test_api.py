"""The Python API builds the Config the command lines build and refuses what they refuse, as a
UsageError naming the setting, before anything runs."""

from __future__ import annotations

import pytest

from vgg_keras import api
from vgg_keras.errors import UsageError


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: api.train("demo", log_dir="x", max_train_step=2),
            r"train\(\): unknown setting 'max_train_step'",
        ),
        (lambda: api.train("demo", batchsize=8), r"unknown setting 'batchsize'"),
        (
            lambda: api.train("demo", batch_size="8x"),
            r"train\(\): batch_size: expected an integer, got '8x'",
        ),
        (
            lambda: api.train("nosuchpreset"),
            r"--preset: must be one of imagenet, demo, small, finetune",
        ),
        (lambda: api.train("demo", lr=float("inf")), r"train\(\): lr: must be a finite number"),
        (
            lambda: api.evaluate("runs/x", eval_crop=10),
            r"evaluate\(\): unknown setting 'eval_crop'",
        ),
        (
            lambda: api.evaluate("runs/x", watch_timeout=float("nan")),
            r"evaluate\(\): watch_timeout: must be a finite number",
        ),
        (lambda: api.build_vgg("vgg12"), r"build_vgg\(\): arch: must be one of"),
    ],
)
def test_bad_settings_are_a_usage_error_naming_them(call, message):
    with pytest.raises(UsageError, match=message):
        call()


def test_build_vgg_takes_the_network_settings():
    from vgg_keras.compat import tf

    with tf.Graph().as_default():
        model = api.build_vgg("vgg11_bn", num_classes=7, image_size=32, width_multiplier=0.125)
        assert model.name == "vgg11_bn" and model.output.shape.as_list() == [None, 7]
