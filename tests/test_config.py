"""Settings: presets, flags (bools, lists, the reference's aliases), and one check of every value
from its declaration, whichever way it arrives (a flag, a --config file, a run's config.json,
the Python API)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from vgg_keras import cli, commands, config
from vgg_keras.config import SETTINGS, Config, resolve
from vgg_keras.errors import UsageError

DATA = ["--data_dir", "/data/imagenet"]


def from_args(argv):
    return commands.train_config(cli.train_args(argv))


def test_imagenet_preset_is_the_declared_defaults():
    c = from_args(DATA)
    assert c == Config().replace(data_dir="/data/imagenet")
    assert (c.network.arch, c.network.class_num, c.network.image_size) == ("vgg16", 1000, 224)
    assert c.input.batch_size == 256


def test_demo_preset():
    c = from_args(["--preset", "demo"])
    for name, value in config.PRESETS["demo"].items():
        assert c.value(name) == value, name
    assert c.input.data_dir == config.DEMO_DATA_DIR and c.network.image_size == 32


def test_flags_override_the_preset():
    c = from_args(["--preset", "demo", "--batch_size", "64", "--arch", "vgg19_bn"])
    assert c.input.batch_size == 64 and c.network.arch == "vgg19_bn"
    assert c.network.class_num == 10


def test_every_setting_has_a_flag_a_help_and_a_part():
    flags = {a.dest for a in _parser_actions()}
    for name, s in SETTINGS.items():
        assert name in flags and s.metadata["help"], name
        assert name in {f.name for f in dataclasses.fields(config.PARTS[s.part])}


def _parser_actions():
    parser = cli.UsageParser()
    cli.add_flags(parser, SETTINGS.values())
    return parser._actions


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["--batch_size", "0"], "--batch_size"),
        (["--eval_batch_size", "0"], "--eval_batch_size"),
        (["--lr", "-0.1"], "--lr"),
        (["--class_num", "1"], "--class_num"),
        (["--image_size", "16"], "--image_size"),
        (["--image_size", "99999"], "--image_size"),
        (["--dropout", "1"], "--dropout"),
        (["--label_smoothing", "1.5"], "--label_smoothing"),
        (["--clip_grad_norm", "-1"], "--clip_grad_norm"),
        (["--clip_grad_norm", "inf"], "--clip_grad_norm"),
        (["--lr_boundaries", "60,30"], "--lr_boundaries"),
        (["--lr_boundaries", "inf"], "--lr_boundaries"),
        (["--lr_values", "0.1,0.01"], "--lr_values"),
        (["--area_range", "0.5"], "--area_range"),
        (["--aspect_ratio_range", "1.3,0.7"], "--aspect_ratio_range"),
        (["--iterations_per_loop", "0"], "--iterations_per_loop"),
        (["--max_train_steps", "0"], "--max_train_steps"),
        (["--keep_checkpoint_max", "0"], "--keep_checkpoint_max"),
        (["--log_name", "a/b.log"], "--log_name"),
        (["--log_name", "train.lock"], "--log_name"),
        (["--batch_size", "many"], "--batch_size"),
        (["--batch_size", "8.5"], "--batch_size"),
        (["--arch", "vgg12"], "--arch"),
        (["--use_nesterov", "maybe"], "--use_nesterov"),
        (["--lr_boundaries", "30,x"], "--lr_boundaries"),
        (["--width_multiplier", "inf"], "--width_multiplier"),
        (["--width_multiplier", "nan"], "--width_multiplier"),
        (["--seed", "99999999999999999999"], "--seed"),
        (["--seed", "-1"], "--seed"),
        (["--shuffle_buffer", "99999999999999999999"], "--shuffle_buffer"),
        (["--eta_min", "inf"], "--eta_min"),
        (["--lr", "1e308"], "--lr"),
        (["--momentum", "1e308"], "--momentum"),
        (["--warmup_epochs", "inf"], "--warmup_epochs"),
        (["--weights", "somewhere.h5"], "--weights"),
        (["--arch", "vgg11", "--weights", "imagenet"], "--weights"),
    ],
)
def test_bad_values_name_the_flag(argv, flag):
    with pytest.raises(UsageError) as err:
        from_args(DATA + argv)
    assert str(err.value).startswith(flag), str(err.value)
    assert "\n" not in str(err.value), "one line"


@pytest.mark.parametrize(
    "values,key",
    [
        ({"log_name": 5}, "log_name"),
        ({"area_range": 0.5}, "area_range"),
        ({"lr_boundaries": [50, "x"]}, "lr_boundaries"),
        ({"batch_size": 8.7}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"data_dir": 5}, "data_dir"),
        ({"devices": 5}, "devices"),
        ({"seed": 1.5}, "seed"),
        ({"batch_size": None}, "batch_size"),
        ({"precision": "int8"}, "precision"),
        ({"lr": float("nan")}, "lr"),
    ],
)
def test_a_config_file_is_checked_like_flags(tmp_path, values, key):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"data_dir": "/d", **values}))
    with pytest.raises(UsageError) as err:
        from_args(["--config", str(path)])
    assert str(err.value).startswith(f"--config {path}: {key}: "), str(err.value)


def test_a_runs_config_json_is_checked_like_flags(tmp_path):
    saved = json.loads(from_args(DATA).to_json())
    for key, bad in (("image_size", None), ("image_size", "x"), ("class_num", 2.5)):
        with pytest.raises(UsageError, match=rf"^runs/x/config.json: {key}: "):
            resolve(saved={**saved, key: bad}, saved_source="runs/x/config.json")
    # Text that a flag would read is read the same way: "32" is the integer 32.
    assert resolve(saved={**saved, "image_size": "32"}).network.image_size == 32


def test_the_api_is_checked_like_flags():
    with pytest.raises(UsageError, match=r"^train\(\): unknown setting 'batchsize'"):
        resolve(settings={"data_dir": "/d", "batchsize": 8}, source="train()")
    with pytest.raises(UsageError, match=r"^train\(\): batch_size: expected an integer"):
        resolve(settings={"data_dir": "/d", "batch_size": "8x"}, source="train()")
    with pytest.raises(UsageError, match="^--preset: must be one of"):
        resolve("nosuchpreset")


def test_a_non_utf8_config_file_is_one_line(tmp_path):
    path = tmp_path / "settings.json"
    path.write_bytes(b'{"batch_size": "\xff"}')
    with pytest.raises(
        UsageError, match=f"^--config {path}: unreadable settings file \\(not UTF-8 text\\)"
    ):
        from_args(["--config", str(path)])


def test_data_dir_is_required_unless_synthetic():
    with pytest.raises(UsageError, match="--data_dir"):
        from_args([])
    assert from_args(["--synthetic"]).input.synthetic is True


def test_choices_are_checked_on_programmatic_configs_too():
    with pytest.raises(UsageError, match="precision"):
        resolve(settings={"data_dir": "/d", "precision": "int8"})


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
    assert from_args(DATA + argv).optimizer.use_nesterov is expected


def test_bare_bool_flag_before_another_flag():
    c = from_args(["--synthetic", "--skip_corrupt", "--batch_size", "8"])
    assert c.input.synthetic is True and c.input.skip_corrupt is True
    assert c.input.batch_size == 8
    assert from_args(["--synthetic", "false", "--data_dir", "/d"]).input.synthetic is False


@pytest.mark.parametrize("flag", ["--dtype", "--precision", "--precision_mode"])
def test_dtype_and_precision_mode_are_aliases_of_precision(flag):
    assert from_args(DATA + [flag, "bf16"]).network.precision == "bf16"


def test_list_flags_are_tuples():
    c = from_args(
        DATA
        + ["--lr_boundaries", "30,60,80", "--lr_values", "0.1,0.01,0.001,0.0001"]
        + ["--restore_exclude", "fc2,predictions", "--devices", "/gpu:0,/gpu:1"]
        + ["--area_range", "0.5,1"]
    )
    assert c.optimizer.lr_boundaries == (30.0, 60.0, 80.0)
    assert c.optimizer.piecewise_values == (0.1, 0.01, 0.001, 0.0001)
    assert c.loop.restore_exclude == ("fc2", "predictions")
    assert c.runtime.devices == ("/gpu:0", "/gpu:1")
    assert c.input.area_range == (0.5, 1.0)


def test_optional_int_and_reference_flag_names():
    c = from_args(
        DATA + ["--max_train_steps", "500", "--rank_size", "8", "--iterations_per_loop", "100"]
    )
    assert (c.loop.max_train_steps, c.runtime.rank_size, c.loop.iterations_per_loop) == (
        500,
        8,
        100,
    )
    assert from_args(DATA).loop.max_train_steps is None


def test_default_piecewise_values_divide_by_ten():
    values = resolve(settings={"data_dir": "/d", "lr": 0.02}).optimizer.piecewise_values
    assert values == (0.02, 0.02 / 10, 0.02 / 100, 0.02 / 1000)


def test_to_json_round_trips_through_a_config_file(tmp_path):
    c = from_args(["--preset", "demo", "--lr_values", "1,2,3,4"])
    path = tmp_path / "config.json"
    path.write_text(c.to_json())
    assert from_args(["--config", str(path)]) == c


def test_the_defaults_are_the_reference_recipe():
    """The seed's values (vgg19/hyper_param.py, model.py, vgg.py, preprocessing.py), as
    literals, not read back from the declarations."""
    c = from_args(DATA)
    o = c.optimizer
    assert (o.momentum, o.use_nesterov, o.label_smoothing) == (0.9, True, 0.1)
    assert o.weight_decay == 1e-4 and o.decay_biases is True  # every trainable variable
    assert o.clip_grad_norm == 0.0 and o.warmup_epochs == 0.0  # no clipping, no warmup
    assert (c.loop.max_epochs, c.input.batch_size, o.lr) == (150.0, 256, 0.01)
    assert o.lr_schedule == "piecewise"
    # 0.01 until step 330,000, 1e-3 until 520,000, 1e-4 through 625,000, then 1e-5; at 5,004
    # steps per epoch (1,281,167 // 256).
    assert [round(b * 5004, 6) for b in o.lr_boundaries] == [330000, 520000, 625001]
    assert o.piecewise_values == (0.01, 0.001, 0.0001, 1e-05)
    assert (c.network.arch, c.network.class_num, c.network.image_size) == ("vgg16", 1000, 224)
    assert c.network.dropout == 0.5
    assert (c.network.conv_init, c.network.dense_init) == ("fan_out", "normal")
    assert c.input.aspect_ratio_range == (0.75, 1.333) and c.input.area_range == (0.08, 1.0)
    assert c.input.min_object_covered == 0.1


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
    assert from_args(DATA + argv).network.precision == precision


@pytest.mark.parametrize("flag", ["--datadir", "--data_path", "--data_dir"])
def test_the_references_data_folder_spellings(flag):
    assert from_args([f"{flag}=/opt/npu/slimImagenet"]).input.data_dir == "/opt/npu/slimImagenet"


def test_the_references_defaults_and_exclude_spelling():
    c = from_args(DATA)
    assert c.loop.mode == "train_and_evaluate" and c.loop.epochs_between_evals == 5
    excluded = from_args(DATA + ["--restore_exclude", "['dense_2','global_step']"])
    assert excluded.loop.restore_exclude == ("dense_2", "global_step")


def test_reference_input_mode_squashes_for_evaluation_by_default():
    assert from_args(DATA).input.resize == "aspect"
    assert from_args(DATA + ["--input_mode", "reference"]).input.resize == "square"
    both = from_args(DATA + ["--input_mode", "reference", "--eval_resize", "aspect"])
    assert both.input.resize == "aspect"


def test_config_file_json_then_flags(tmp_path):
    saved = from_args(["--preset", "demo", "--lr", "0.02", "--batch_size", "16"])
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**saved.flat(), "run": {"steps_per_epoch": 89}}))
    repeated = from_args(["--config", str(path), "--log_dir", "runs/again"])
    assert repeated == saved.replace(log_dir="runs/again")
    path.write_text(json.dumps({"batch_size": "8", "dtype": "x"}))
    with pytest.raises(UsageError, match="unknown setting 'dtype'"):
        from_args(["--config", str(path)])
    path.write_text(json.dumps({"batch_size": "8", "precision": "tf.float16", "data_dir": "/d"}))
    c = from_args(["--config", str(path)])
    assert (c.input.batch_size, c.network.precision) == (8, "fp16")


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
    assert (c.input.batch_size, c.optimizer.lr_boundaries) == (8, (10.0, 20.0))


def test_class_num_from_the_dataset_where_data_is_read():
    def classes(data_dir, offset):
        return 7 - offset + 1

    c = resolve(settings={"data_dir": "/d"}, dataset_classes=classes)
    assert c.network.class_num == 7
    with pytest.raises(UsageError, match="--class_num 5: the dataset in /d has 7 classes"):
        resolve(settings={"data_dir": "/d", "class_num": 5}, dataset_classes=classes)
    assert resolve(settings={"data_dir": "/d", "class_num": 9}, dataset_classes=classes)


def test_a_config_file_nested_too_deeply_is_one_line(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(
        UsageError, match=f"^--config {path}: unreadable settings file \\(nested too deeply\\)"
    ) as err:
        from_args(["--config", str(path)])
    assert "\n" not in str(err.value)


def test_an_integer_beyond_any_float_is_too_large_wherever_it_arrives(tmp_path):
    huge = 10**400
    path = tmp_path / "huge.json"
    path.write_text(json.dumps({"data_dir": "/d", "lr": huge}))
    with pytest.raises(UsageError, match=rf"^--config {path}: lr: is too large"):
        from_args(["--config", str(path)])
    with pytest.raises(UsageError, match=r"^train\(\): lr: is too large"):
        resolve(settings={"data_dir": "/d", "lr": huge}, source="train()")


def test_yaml_files_with_odd_keys_or_bad_syntax_are_one_line(tmp_path):
    pytest.importorskip("yaml")
    keys = tmp_path / "keys.yaml"
    keys.write_text("1: 2\nfoo: 3\n")
    with pytest.raises(UsageError, match=rf"^--config {keys}: unknown setting 1"):
        from_args(["--config", str(keys)])
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [0.1\n")
    with pytest.raises(
        UsageError, match=rf"^--config {bad}: unreadable settings file \(.*line 2"
    ) as err:
        from_args(["--config", str(bad)])
    assert "\n" not in str(err.value)


def test_the_api_refuses_a_preset_or_config_path_of_the_wrong_type(tmp_path):
    with pytest.raises(UsageError, match="^--preset: must be one of"):
        resolve(["demo"])
    with pytest.raises(UsageError, match=r"^--config: expected a file's path, got 5"):
        resolve(settings_file=5)
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"data_dir": "/d", "batch_size": 8}))
    assert resolve(settings_file=path).input.batch_size == 8  # a pathlib.Path is a path
