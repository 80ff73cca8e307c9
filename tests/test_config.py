"""Settings: presets, flags (bools, lists, the --dtype alias), validation naming the flag."""

from __future__ import annotations

import dataclasses
import json

import pytest

from vgg_keras import config
from vgg_keras.config import Config, from_args, make_config
from vgg_keras.errors import UsageError

DATA = ["--data_dir", "/data/imagenet"]


def test_imagenet_preset_is_the_dataclass_defaults():
    c = from_args(DATA)
    assert c == dataclasses.replace(Config(), data_dir="/data/imagenet")
    assert (c.arch, c.class_num, c.image_size, c.batch_size) == ("vgg16", 1000, 224, 256)


def test_demo_preset():
    c = from_args(["--preset", "demo"])
    for name, value in config.PRESETS["demo"].items():
        assert getattr(c, name) == value, name
    assert c.data_dir == config.DEMO_DATA_DIR and c.class_num == 10 and c.image_size == 32


def test_flags_override_the_preset():
    c = from_args(["--preset", "demo", "--batch_size", "64", "--arch", "vgg19"])
    assert c.batch_size == 64 and c.arch == "vgg19" and c.class_num == 10


def test_every_setting_has_a_flag_and_help():
    names = {f.name for f in dataclasses.fields(Config)}
    assert names == set(config.HELP)
    flags = {a.dest for a in config.train_parser()._actions}
    assert names <= flags


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["--batch_size", "0"], "--batch_size"),
        (["--eval_batch_size", "0"], "--eval_batch_size"),
        (["--lr", "-0.1"], "--lr"),
        (["--class_num", "1"], "--class_num"),
        (["--image_size", "16"], "--image_size"),
        (["--dropout", "1"], "--dropout"),
        (["--label_smoothing", "1.5"], "--label_smoothing"),
        (["--clip_grad_norm", "-1"], "--clip_grad_norm"),
        (["--clip_grad_norm", "inf"], "--clip_grad_norm"),
        (["--lr_boundaries", "60,30"], "--lr_boundaries"),
        (["--lr_values", "0.1,0.01"], "--lr_values"),
        (["--area_range", "0.5"], "--area_range"),
        (["--aspect_ratio_range", "1.3,0.7"], "--aspect_ratio_range"),
        (["--iterations_per_loop", "0"], "--iterations_per_loop"),
        (["--max_train_steps", "0"], "--max_train_steps"),
        (["--keep_checkpoint_max", "0"], "--keep_checkpoint_max"),
        (["--log_name", "a/b.log"], "--log_name"),
        (["--batch_size", "many"], "--batch_size"),  # argparse type error
        (["--arch", "vgg11"], "--arch"),  # argparse choice error
        (["--use_nesterov", "maybe"], "--use_nesterov"),
        (["--lr_boundaries", "30,x"], "--lr_boundaries"),
    ],
)
def test_bad_values_name_the_flag(argv, flag):
    with pytest.raises(UsageError) as err:
        from_args(DATA + argv)
    assert flag in str(err.value)
    assert "\n" not in str(err.value), "one line"


def test_data_dir_is_required_unless_synthetic():
    with pytest.raises(UsageError, match="--data_dir"):
        from_args([])
    assert from_args(["--synthetic"]).synthetic is True


def test_choices_are_checked_on_programmatic_configs_too():
    with pytest.raises(UsageError, match="--precision"):
        make_config(data_dir="/d", precision="int8")


@pytest.mark.parametrize(
    "argv,expected",
    [
        ([], True),
        (["--use_nesterov"], True),
        (["--use_nesterov", "false"], False),
        (["--use_nesterov", "0"], False),
        (["--use_nesterov", "True"], True),
        (["--use_nesterov=no"], False),
    ],
)
def test_bool_flags(argv, expected):
    assert from_args(DATA + argv).use_nesterov is expected


def test_bare_bool_flag_before_another_flag():
    c = from_args(["--synthetic", "--skip_corrupt", "--batch_size", "8"])
    assert c.synthetic is True and c.skip_corrupt is True and c.batch_size == 8
    assert from_args(["--synthetic", "false", "--data_dir", "/d"]).synthetic is False


@pytest.mark.parametrize("flag", ["--dtype", "--precision"])
def test_dtype_is_an_alias_of_precision(flag):
    assert from_args(DATA + [flag, "bf16"]).precision == "bf16"


def test_list_flags():
    c = from_args(
        DATA
        + [
            "--lr_boundaries",
            "30,60,80",
            "--lr_values",
            "0.1,0.01,0.001,0.0001",
            "--restore_exclude",
            "fc2,predictions",
            "--devices",
            "/gpu:0,/gpu:1",
            "--area_range",
            "0.5,1",
        ]
    )
    assert c.lr_boundaries == [30.0, 60.0, 80.0]
    assert c.lr_values == [0.1, 0.01, 0.001, 0.0001]
    assert c.piecewise_values == c.lr_values
    assert c.restore_exclude == ["fc2", "predictions"]
    assert c.devices == ["/gpu:0", "/gpu:1"]
    assert c.area_range == [0.5, 1.0]


def test_optional_int_and_reference_flag_names():
    c = from_args(
        DATA + ["--max_train_steps", "500", "--rank_size", "8", "--iterations_per_loop", "100"]
    )
    assert (c.max_train_steps, c.rank_size, c.iterations_per_loop) == (500, 8, 100)
    assert from_args(DATA).max_train_steps is None


def test_default_piecewise_values_divide_by_ten():
    values = make_config(data_dir="/d", lr=0.02).piecewise_values
    assert values == pytest.approx([0.02, 0.002, 0.0002, 0.00002])


def test_to_json_round_trips():
    c = from_args(["--preset", "demo", "--lr_values", "1,2,3,4"])
    assert Config(**json.loads(c.to_json())) == c


def test_the_defaults_are_the_reference_recipe():
    """The reference implementation's values, as literals (not read back from Config)."""
    c = from_args(DATA)
    assert (c.momentum, c.use_nesterov) == (0.9, True)
    assert c.label_smoothing == 0.1
    assert c.weight_decay == 1e-4 and c.decay_biases is False
    assert c.clip_grad_norm == 0.0  # no clipping
    assert (c.max_epochs, c.batch_size, c.lr) == (150.0, 256, 0.01)
    assert c.lr_schedule == "piecewise" and c.lr_boundaries == [50.0, 100.0, 130.0]
    assert c.piecewise_values == pytest.approx([0.01, 0.001, 1e-4, 1e-5])
    assert (c.arch, c.class_num, c.image_size, c.dropout) == ("vgg16", 1000, 224, 0.5)
    # He-normal convolutions on fan-out: the reference's, published with lr 0.01
    assert (c.conv_init, c.dense_init) == ("fan_out", "normal")


@pytest.mark.parametrize(
    ("argv", "precision"),
    [
        (["--dtype", "tf.float32"], "fp32"),
        (["--dtype=tf.float16"], "fp16"),
        (["--dtype", "tf.bfloat16"], "bf16"),
        (["--precision_mode", "allow_mix_precision"], "fp16"),
        (["--precision_mode=allow_fp32_to_fp16"], "fp32"),
    ],
)
def test_the_references_dtype_and_precision_mode_values(argv, precision):
    assert from_args(DATA + argv).precision == precision


@pytest.mark.parametrize("flag", ["--datadir", "--data_path", "--data_dir"])
def test_the_references_data_folder_spellings(flag):
    assert from_args([f"{flag}=/opt/npu/slimImagenet"]).data_dir == "/opt/npu/slimImagenet"


def test_the_references_defaults():
    c = from_args(DATA)
    assert c.mode == "train_and_evaluate" and c.epochs_between_evals == 5
    assert from_args(DATA + ["--restore_exclude", "['dense_2','global_step']"]).restore_exclude == [
        "dense_2",
        "global_step",
    ]


def test_config_file_json_then_flags(tmp_path):
    saved = from_args(["--preset", "demo", "--lr", "0.02", "--batch_size", "16"])
    path = tmp_path / "config.json"
    path.write_text(saved.to_json())
    repeated = from_args(["--config", str(path), "--log_dir", "runs/again"])
    assert repeated == dataclasses.replace(saved, log_dir="runs/again")
    path.write_text(json.dumps({"batch_size": "8", "dtype": "x"}))
    with pytest.raises(UsageError, match="unknown setting 'dtype'"):
        from_args(["--config", str(path)])
    path.write_text(json.dumps({"batch_size": "8", "precision": "tf.float16", "data_dir": "/d"}))
    c = from_args(["--config", str(path)])
    assert (c.batch_size, c.precision) == (8, "fp16")


def test_config_file_yaml_when_pyyaml_is_there(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data_dir: /d\nbatch_size: 8\nlr_boundaries: [10, 20]\n")
    try:
        import yaml  # noqa: F401
    except ImportError:
        with pytest.raises(UsageError, match="PyYAML"):
            from_args(["--config", str(path)])
        return
    c = from_args(["--config", str(path)])
    assert (c.batch_size, c.lr_boundaries) == (8, [10, 20])
