"""Every setting in one dataclass: its flag, help, choices and group; presets; merging; validation.

Flag names follow the reference implementation (``--rank_size --mode --max_train_steps
--iterations_per_loop ... --class_num``); the rest are additions.  Two presets exist:
``imagenet`` (the full recipe, the defaults below) and ``demo`` (a width-scaled VGG16 on the
embedded digits dataset, trained to >= 97% top-1 in a few minutes on two CPU cores).

Each field's metadata says which group it belongs to, and the group decides who reads it:

- ``network``: defines the network a checkpoint holds; a run folder keeps them fixed, and
  every CLI that loads a checkpoint may override them;
- ``evaluation``: what evaluating a checkpoint needs besides the network (its data);
- ``runtime``: how this process runs; never inherited from a run's config.json;
- ``training``: the rest, read by training only.

The annotations use ``typing.Optional``/``typing.List`` so that ``typing.get_type_hints`` can
evaluate them on every Python this project supports (3.7 included); flag types come from there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import typing
from dataclasses import dataclass, field
from typing import List, Optional

from vgg_keras.data import info
from vgg_keras.errors import UsageError

DEMO_DATA_DIR = "data/demo"
WEIGHTS_PREFIX = "keras_imagenet:"  # --weights keras_imagenet:PATH (room for other sources)
GROUPS = ("network", "evaluation", "runtime", "training")


def setting(default, help: str, group: str = "training", choices=None, aliases=(), synonyms=None):
    """A Config field with its flag's help, choices, group, extra flag names, and ``synonyms``:
    other spellings of its values (the reference's), read as the value they name."""
    assert group in GROUPS, group
    metadata = {
        "help": help,
        "group": group,
        "choices": choices,
        "aliases": tuple(aliases),
        "synonyms": dict(synonyms or {}),
    }
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class Config:
    # Network
    arch: str = setting("vgg16", "network: vgg16 or vgg19", "network", ("vgg16", "vgg19"))
    class_num: int = setting(1000, "number of classes (ImageNet: 1000)", "network")
    image_size: int = setting(224, "training/eval crop size in pixels", "network")
    width_multiplier: float = setting(
        1.0, "scales every layer's width (1.0 = the published network)", "network"
    )
    preprocess: str = setting(
        "imagenet",
        "input normalisation: imagenet (mean/std, RGB) or caffe (BGR minus mean, what the "
        "published Keras weights expect)",
        "network",
        ("imagenet", "caffe"),
    )
    dropout: float = setting(0.5, "dropout rate after fc1 and fc2")
    dense_init: str = setting(
        "normal",
        "fc1/fc2 init: normal (N(0, 0.01), published) or he (for width-scaled nets)",
        choices=("normal", "he"),
    )
    conv_init: str = setting(
        "fan_out",
        "conv init: He-normal on fan_out (the reference's; keeps the gradients' scale) or fan_in "
        "(keeps the forward signal; the demo's)",
        choices=("fan_in", "fan_out"),
    )
    # Data
    data_dir: Optional[str] = setting(
        None,
        "folder of train-*/validation-* TFRecord shards, or tfds:NAME[:split]",
        "evaluation",
        aliases=("--datadir", "--data_path"),  # the reference's README and test scripts
    )
    tfds_data_dir: Optional[str] = setting(
        None, "data_dir of a TFDS-prepared dataset (with --data_dir tfds:NAME)", "evaluation"
    )
    synthetic: bool = setting(
        False, "device-resident random data of the same shapes (throughput upper bound)"
    )
    label_offset: int = setting(
        1,
        "subtracted from stored labels (TF-slim ImageNet: 1, since 0 is background)",
        "evaluation",
    )
    shuffle_buffer: int = setting(10000, "records in the training shuffle buffer")
    min_object_covered: float = setting(
        0.1, "random crop: minimum fraction of the bounding box kept"
    )
    area_range: List[float] = setting(
        [0.08, 1.0], "random crop: min,max fraction of the image area"
    )
    aspect_ratio_range: List[float] = setting([0.75, 1.33], "random crop: min,max aspect ratio")
    skip_corrupt: bool = setting(
        False, "skip unreadable records (and count them) instead of stopping", "evaluation"
    )
    eval_resize: str = setting(
        "aspect",
        "evaluation: before the central crop, resize the shorter side to image_size*256/224 "
        "(aspect) or the whole image to that square (square, the reference's 256x256)",
        "evaluation",
        ("aspect", "square"),
    )
    # Optimisation
    batch_size: int = setting(256, "images per replica per step")
    eval_batch_size: Optional[int] = setting(
        None, "images per eval batch (default: --batch_size)", "evaluation"
    )
    lr: float = setting(0.01, "base learning rate")
    lr_schedule: str = setting("piecewise", "piecewise or cosine", choices=("piecewise", "cosine"))
    lr_boundaries: List[float] = setting(
        [50.0, 100.0, 130.0], "piecewise: epoch boundaries, comma-separated"
    )
    lr_values: Optional[List[float]] = setting(
        None, "piecewise: values, one more than boundaries (default: lr, lr/10, ...)"
    )
    T_max: float = setting(150.0, "cosine: epochs until eta_min")
    eta_min: float = setting(0.0, "cosine: final learning rate")
    warmup_epochs: float = setting(
        0.0,
        "linear warmup over this many epochs: step k (from 0) gets (k+1)/warmup_steps of the "
        "learning rate",
    )
    scale_lr: bool = setting(False, "linear scaling rule: lr = lr * global_batch / 256")
    momentum: float = setting(0.9, "momentum")
    use_nesterov: bool = setting(True, "Nesterov momentum")
    label_smoothing: float = setting(0.1, "label smoothing of the cross-entropy")
    weight_decay: float = setting(1e-4, "L2 weight decay factor on kernels")
    decay_biases: bool = setting(False, "also decay biases (as the reference did)")
    clip_grad_norm: float = setting(
        0.0,
        "clip each step's gradient to this global norm (0: off, the reference's); keeps one "
        "outsized step from knocking a plain VGG back to chance (the demo's: 5)",
    )
    precision: str = setting(
        "fp32",
        "fp32, bf16 or fp16 (mixed precision via the Keras policy)",
        "evaluation",
        ("fp32", "bf16", "fp16"),
        # The reference's --dtype tf.float32 and its scripts' NPU precision_mode values.
        aliases=("--dtype", "--precision_mode"),
        synonyms={
            "tf.float32": "fp32",
            "float32": "fp32",
            "tf.float16": "fp16",
            "float16": "fp16",
            "tf.bfloat16": "bf16",
            "bfloat16": "bf16",
            "allow_fp32_to_fp16": "fp32",
            "allow_mix_precision": "fp16",
            "allow_mix_precision_bf16": "bf16",
        },
    )
    # Loop
    mode: str = setting(
        "train_and_evaluate",
        "train, evaluate (every checkpoint in --eval_dir) or train_and_evaluate (evaluate every "
        "--epochs_between_evals epochs; trains only with --synthetic and no --data_dir)",
        choices=("train", "evaluate", "train_and_evaluate"),
    )
    max_train_steps: Optional[int] = setting(
        None, "stop after this many global steps (overrides --max_epochs)"
    )
    max_epochs: float = setting(150.0, "epochs to train")
    epochs_between_evals: float = setting(5.0, "train_and_evaluate: epochs between evaluations")
    iterations_per_loop: int = setting(10, "training steps per session call (loop sinking)")
    display_every: int = setting(100, "steps between log lines")
    log_name: str = setting("train.log", "log file name inside --log_dir")
    log_dir: str = setting(
        "runs/vgg16", "checkpoints, logs, metrics.jsonl, config.json, TensorBoard events"
    )
    save_checkpoints_steps: Optional[int] = setting(
        None, "steps between checkpoints (default: one epoch)"
    )
    keep_checkpoint_max: int = setting(5, "checkpoints kept")
    restore_path: Optional[str] = setting(None, "initialise from this checkpoint (fine-tuning)")
    restore_exclude: List[str] = setting(
        ["predictions"],
        "with --restore_path or --weights: scopes (layers) not loaded, comma-separated",
    )
    weights: Optional[str] = setting(
        None,
        "initialise from keras_imagenet:PATH, a keras.applications VGG16/VGG19 .h5 weight file, "
        "by layer name (never downloaded)",
    )
    eval_dir: Optional[str] = setting(None, "checkpoint folder to evaluate (default: --log_dir)")
    seed: int = setting(0, "random seed (weight init, dropout, shuffling, augmentation)")
    nan_policy: str = setting(
        "stop",
        "on NaN/Inf loss: stop, or skip_step (discard the update)",
        choices=("stop", "skip_step"),
    )
    overwrite: bool = setting(False, "allow a fresh start over a log_dir holding another run")
    # Runtime
    distribution: str = setting(
        "auto",
        "none, mirrored (local GPUs), multi_worker (TF_CONFIG), npu (Ascend), or auto: "
        "multi_worker under TF_CONFIG, mirrored with --devices or >1 GPU, npu where npu_bridge "
        "imports, else none",
        choices=("auto", "none", "mirrored", "multi_worker", "npu"),
    )
    devices: Optional[List[str]] = setting(
        None,
        "mirrored: devices, comma-separated (default: all GPUs); cpu:0,cpu:1 splits the host "
        "CPU into two devices",
    )
    rank_size: int = setting(
        1, "npu: devices (processes) in the job, with RANK_ID and RANK_TABLE_FILE set"
    )
    intra_op_threads: int = setting(0, "threads inside one op (0: TensorFlow's choice)", "runtime")
    inter_op_threads: int = setting(0, "ops run in parallel (0: TensorFlow's choice)", "runtime")
    xla: bool = setting(False, "XLA auto-clustering", "runtime")
    progress: bool = setting(True, "show tqdm progress bars", "runtime")

    @property
    def piecewise_values(self) -> list[float]:
        """The piecewise LR values; by default lr, lr/10, lr/100, ... one more than boundaries."""
        if self.lr_values:
            return list(self.lr_values)
        return [self.lr * 0.1**i for i in range(len(self.lr_boundaries) + 1)]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


def names(*groups: str) -> tuple[str, ...]:
    """The settings of ``groups`` (all of them without arguments), in field order."""
    return tuple(
        f.name for f in dataclasses.fields(Config) if not groups or f.metadata["group"] in groups
    )


# Read from the fields, for the tests and for readers; the fields are the one definition.
HELP = {f.name: f.metadata["help"] for f in dataclasses.fields(Config)}
CHOICES = {
    f.name: f.metadata["choices"] for f in dataclasses.fields(Config) if f.metadata["choices"]
}
NETWORK_KEYS = names("network")  # a checkpoint fits only a run that agrees on all of them


PRESETS: dict[str, dict] = {
    "imagenet": {},
    "demo": {
        "data_dir": DEMO_DATA_DIR,
        "class_num": 10,
        "image_size": 32,
        "width_multiplier": 0.25,
        "dropout": 0.0,
        "dense_init": "he",
        "conv_init": "fan_in",
        "batch_size": 32,
        "lr": 0.01,
        "lr_schedule": "cosine",
        "T_max": 20.0,
        "warmup_epochs": 1.0,
        "clip_grad_norm": 5.0,
        "max_epochs": 20.0,
        "epochs_between_evals": 5.0,
        "area_range": [0.6, 1.0],
        "aspect_ratio_range": [0.85, 1.18],
        "shuffle_buffer": 2000,
        "display_every": 50,
        "log_dir": "runs/demo",
        "mode": "train_and_evaluate",
    },
}


def str2bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "y", "on"):
        return True
    if value in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _list_of(kind):
    def parse(text: str):
        # Also the reference's Python-literal lists: "['dense_2','global_step']".
        parts = [p.strip(" '\"") for p in str(text).strip().strip("[]").split(",")]
        try:
            return [kind(p) for p in parts if p]
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list: {text!r}") from err

    parse.__name__ = f"list of {kind.__name__}"
    return parse


def _flag_type(hint):
    """argparse type for a field's type hint: Optional[X] is X, List[X] a comma-separated list."""
    args = getattr(hint, "__args__", None) or ()
    if getattr(hint, "__origin__", None) is typing.Union:  # Optional[X]
        return _flag_type(next(a for a in args if a is not type(None)))
    if getattr(hint, "__origin__", None) in (list, List):
        return _list_of(args[0])
    return str2bool if hint is bool else hint


def _with_synonyms(parse, synonyms: dict):
    """``parse`` that first reads the value's other spellings."""

    def read(text: str):
        return synonyms.get(text, parse(text) if callable(parse) else text)

    read.__name__ = getattr(parse, "__name__", "value")
    return read


class UsageParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors become a UsageError (one line, exit code 2)."""

    def error(self, message: str):
        raise UsageError(message)


def add_config_flags(parser: argparse.ArgumentParser, only=None) -> None:
    """Add one flag per Config field (all of them, or those in ``only``); defaults are None, so
    that ``merge`` can tell a flag given from one left out."""
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        if only is not None and f.name not in only:
            continue
        kwargs = {"type": _flag_type(hints[f.name]), "default": None, "help": f.metadata["help"]}
        if f.metadata["synonyms"]:
            kwargs["type"] = _with_synonyms(kwargs["type"], f.metadata["synonyms"])
        if f.metadata["choices"]:
            kwargs["choices"] = f.metadata["choices"]
        if kwargs["type"] is str2bool:
            kwargs.update(nargs="?", const=True)
        parser.add_argument(f"--{f.name}", *f.metadata["aliases"], dest=f.name, **kwargs)


def train_parser() -> argparse.ArgumentParser:
    parser = UsageParser(
        prog="run_train.py",
        description="Train VGG16/VGG19 on TF-slim ImageNet TFRecords.",
    )
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="imagenet", help="starting defaults"
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="settings from a JSON (or, with PyYAML installed, YAML) file with config.json's "
        "keys, e.g. another run's config.json; flags override it",
    )
    add_config_flags(parser)
    return parser


def read_settings_file(path: str) -> dict:
    """The settings in a --config file: a JSON or YAML mapping of setting names to values."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise UsageError(f"--config {path}: cannot read it ({err.strerror})") from err
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError as err:
            raise UsageError(
                f"--config {path}: reading YAML needs PyYAML (pip install pyyaml); "
                "or give the settings as JSON"
            ) from err
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise UsageError(f"--config {path}: not valid YAML ({err})") from err
    else:
        try:
            values = json.loads(text)
        except ValueError as err:
            raise UsageError(f"--config {path}: not valid JSON ({err})") from err
    if not isinstance(values, dict):
        raise UsageError(f"--config {path}: expected a mapping of setting names to values")
    unknown = sorted(set(values) - set(HELP))
    if unknown:
        raise UsageError(f"--config {path}: unknown setting {unknown[0]!r}")
    return {name: _from_file(name, value) for name, value in values.items()}


def _from_file(name: str, value):
    """A file's value as its flag would read it when written as text (``"8"``, ``"1,2"``,
    ``tf.float32``); other values as they are."""
    if not isinstance(value, str):
        return value
    f = next(f for f in dataclasses.fields(Config) if f.name == name)
    parse = _flag_type(typing.get_type_hints(Config)[name])
    try:
        value = f.metadata["synonyms"].get(value, value)
        return value if parse is str else parse(value)
    except (ValueError, argparse.ArgumentTypeError) as err:
        raise UsageError(f"--config: {name}: {err}") from err


def merge(
    preset: str = "imagenet",
    saved: Optional[dict] = None,
    flags: Optional[dict] = None,
    need_data: bool = True,
    settings_file: Optional[dict] = None,
) -> Config:
    """The one way every CLI resolves its settings: defaults <- preset <- a run's config.json
    (``saved``, without the runtime settings) <- a --config file (``settings_file``, all of
    it) <- flags given (None means not given).

    Keys that are not settings are ignored (a CLI's own flags, config.json of another version).
    ``need_data=False`` for tools that need no training data (export, predict).
    """
    values = dict(PRESETS[preset])
    inherited = set(names()) - set(names("runtime"))
    values.update({k: v for k, v in (saved or {}).items() if k in inherited})
    values.update({k: v for k, v in (settings_file or {}).items() if k in HELP})
    given = {k: v for k, v in (flags or {}).items() if k in HELP and v is not None}
    values.update(given)
    if need_data:  # export and predict compare the class count with the checkpoint's instead
        chosen = any("class_num" in d for d in (given, saved or {}, settings_file or {}))
        _class_num_from_data(values, chosen=chosen)
    config = Config(**values)
    validate(config, need_data)
    return config


def _class_num_from_data(values: dict, chosen: bool) -> None:
    """class_num defaults to the classes the dataset's labels need (dataset_info.json's
    num_classes, shifted when --label_offset differs from the file's); a class count chosen by
    flag or by the run's config.json that is smaller is refused, one that is larger (a head
    with spare classes) is noted."""
    data_dir = values.get("data_dir")
    if not data_dir or values.get("synthetic") or not os.path.isdir(data_dir):
        return
    meta = info.read_info(data_dir)
    if not isinstance(meta.get("num_classes"), int):
        return
    offset = values.get("label_offset", Config.label_offset)
    needed = meta["num_classes"] + int(meta.get("label_offset", 1)) - offset
    class_num = values.get("class_num", Config.class_num)
    if not chosen:
        values["class_num"] = needed
    elif class_num < needed:
        raise UsageError(
            f"--class_num {class_num}: the dataset in {data_dir} has {needed} classes "
            f"({info.INFO_FILE})"
        )
    elif class_num > needed:
        print(
            f"note: --class_num {class_num}: the dataset in {data_dir} has {needed} classes; "
            f"{class_num - needed} of the network's classes have no images",
            file=sys.stderr,
        )


def make_config(preset: str = "imagenet", **flags) -> Config:
    """``merge(preset, flags=flags)``: a validated Config from a preset and explicit values."""
    return merge(preset, flags=flags)


def from_args(argv: Optional[List[str]] = None) -> Config:
    args = vars(train_parser().parse_args(argv))
    path = args.pop("config")
    settings_file = read_settings_file(path) if path else None
    return merge(args.pop("preset"), flags=args, settings_file=settings_file)


# What a run keeps in its log_dir (rundir, reporting, runlock, checkpoints, evaluation): a log
# file of that name would be appended to it.
RUN_FILES = (
    "config.json",
    "metrics.jsonl",
    "checkpoint",
    "train.lock",
    "eval.log",
    "eval_results.json",
    "eval_results.csv",
    "eval_curve.png",
    "eval",
)
RUN_FILE_PREFIXES = ("model.ckpt", "events.out.tfevents", ".")


def _need(ok: bool, flag: str, message: str) -> None:
    if not ok:
        raise UsageError(f"--{flag}: {message}")


def validate(c: Config, need_data: bool = True) -> None:
    """Reject values that cannot work, naming the flag."""
    for name, choices in CHOICES.items():
        _need(getattr(c, name) in choices, name, f"must be one of {', '.join(choices)}")
    _need(c.class_num >= 2, "class_num", f"needs at least 2 classes, got {c.class_num}")
    _need(
        c.image_size >= 32, "image_size", f"must be at least 32 (5 max-pools), got {c.image_size}"
    )
    _need(c.width_multiplier > 0, "width_multiplier", f"must be > 0, got {c.width_multiplier}")
    _need(0 <= c.dropout < 1, "dropout", f"must be in [0, 1), got {c.dropout}")
    _need(c.batch_size >= 1, "batch_size", f"must be >= 1, got {c.batch_size}")
    _need(
        c.eval_batch_size is None or c.eval_batch_size >= 1,
        "eval_batch_size",
        f"must be >= 1, got {c.eval_batch_size}",
    )
    _need(0 < c.lr < math.inf, "lr", f"must be > 0 and finite, got {c.lr}")
    _need(0 <= c.momentum < math.inf, "momentum", f"must be >= 0 and finite, got {c.momentum}")
    _need(
        0 <= c.label_smoothing < 1, "label_smoothing", f"must be in [0, 1), got {c.label_smoothing}"
    )
    _need(
        0 <= c.weight_decay < math.inf,
        "weight_decay",
        f"must be >= 0 and finite, got {c.weight_decay}",
    )
    _need(
        0 <= c.clip_grad_norm < math.inf,
        "clip_grad_norm",
        f"must be >= 0 and finite (0: off), got {c.clip_grad_norm}",
    )
    _need(c.T_max > 0, "T_max", f"must be > 0 epochs, got {c.T_max}")
    _need(c.eta_min >= 0, "eta_min", f"must be >= 0, got {c.eta_min}")
    _need(c.warmup_epochs >= 0, "warmup_epochs", f"must be >= 0, got {c.warmup_epochs}")
    _need(
        list(c.lr_boundaries) == sorted(c.lr_boundaries) and all(b > 0 for b in c.lr_boundaries),
        "lr_boundaries",
        f"must be positive and increasing, got {c.lr_boundaries}",
    )
    if c.lr_values is not None:
        _need(
            len(c.lr_values) == len(c.lr_boundaries) + 1,
            "lr_values",
            f"needs {len(c.lr_boundaries) + 1} values for {len(c.lr_boundaries)} boundaries, "
            f"got {len(c.lr_values)}",
        )
        _need(all(0 <= v < math.inf for v in c.lr_values), "lr_values", "must be >= 0, finite")
    _validate_loop(c)
    _validate_data(c, need_data)


def _validate_loop(c: Config) -> None:
    _need(
        c.max_train_steps is None or c.max_train_steps >= 1,
        "max_train_steps",
        f"must be >= 1, got {c.max_train_steps}",
    )
    _need(c.max_epochs > 0, "max_epochs", f"must be > 0, got {c.max_epochs}")
    _need(c.epochs_between_evals > 0, "epochs_between_evals", "must be > 0")
    _need(
        c.iterations_per_loop >= 1,
        "iterations_per_loop",
        f"must be >= 1, got {c.iterations_per_loop}",
    )
    _need(c.display_every >= 1, "display_every", f"must be >= 1, got {c.display_every}")
    _need(
        c.save_checkpoints_steps is None or c.save_checkpoints_steps >= 1,
        "save_checkpoints_steps",
        "must be >= 1",
    )
    _need(c.keep_checkpoint_max >= 1, "keep_checkpoint_max", "must be >= 1")
    _need(c.rank_size >= 1, "rank_size", f"must be >= 1, got {c.rank_size}")
    _need(
        bool(c.log_name) and "/" not in c.log_name and os.sep not in c.log_name,
        "log_name",
        "must be a file name, not a path",
    )
    _need(
        c.log_name not in (".", "..")
        and not c.log_name.startswith(RUN_FILE_PREFIXES)
        and c.log_name not in RUN_FILES,
        "log_name",
        f"{c.log_name} is one of the run's own files in --log_dir; choose another name",
    )


def _validate_data(c: Config, need_data: bool) -> None:
    _need(c.shuffle_buffer >= 1, "shuffle_buffer", "must be >= 1")
    _need(0 <= c.min_object_covered <= 1, "min_object_covered", "must be in [0, 1]")
    _need(
        len(c.area_range) == 2 and 0 < c.area_range[0] <= c.area_range[1] <= 1,
        "area_range",
        f"must be two fractions min,max in (0, 1], got {c.area_range}",
    )
    _need(
        len(c.aspect_ratio_range) == 2 and 0 < c.aspect_ratio_range[0] <= c.aspect_ratio_range[1],
        "aspect_ratio_range",
        f"must be two ratios min,max, got {c.aspect_ratio_range}",
    )
    _need(
        c.synthetic or c.data_dir is not None or not need_data,
        "data_dir",
        "is required (or use --synthetic, or --preset demo)",
    )
    if c.weights is not None:
        _need(
            c.weights.startswith(WEIGHTS_PREFIX) and len(c.weights) > len(WEIGHTS_PREFIX),
            "weights",
            f"expected {WEIGHTS_PREFIX}PATH, got {c.weights!r}",
        )
        _need(c.restore_path is None, "weights", "use either --weights or --restore_path")
