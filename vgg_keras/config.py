"""Every training setting in one dataclass, its command-line flags, presets and validation.

Flag names follow the reference implementation (``--rank_size --mode --max_train_steps
--iterations_per_loop ... --class_num``); the rest are additions.  Two presets exist:
``imagenet`` (the full recipe, the defaults below) and ``demo`` (a width-scaled VGG16 on the
embedded digits dataset, trained to >= 97% top-1 in a few minutes on two CPU cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field

from vgg_keras.errors import UsageError

DEMO_DATA_DIR = "data/demo"
WEIGHTS_PREFIX = "keras_imagenet:"  # --weights keras_imagenet:PATH (room for other sources)


@dataclass
class Config:
    # Model
    arch: str = "vgg16"
    class_num: int = 1000
    image_size: int = 224
    width_multiplier: float = 1.0
    dropout: float = 0.5
    dense_init: str = "normal"
    # Data
    data_dir: str | None = None
    tfds_data_dir: str | None = None
    synthetic: bool = False
    label_offset: int = 1
    shuffle_buffer: int = 10000
    min_object_covered: float = 0.1
    area_range: list[float] = field(default_factory=lambda: [0.08, 1.0])
    aspect_ratio_range: list[float] = field(default_factory=lambda: [0.75, 1.33])
    skip_corrupt: bool = False
    preprocess: str = "imagenet"
    # Optimisation
    batch_size: int = 256
    eval_batch_size: int | None = None
    lr: float = 0.01
    lr_schedule: str = "piecewise"
    lr_boundaries: list[float] = field(default_factory=lambda: [50.0, 100.0, 130.0])
    lr_values: list[float] | None = None
    T_max: float = 150.0
    eta_min: float = 0.0
    warmup_epochs: float = 0.0
    scale_lr: bool = False
    momentum: float = 0.9
    use_nesterov: bool = True
    label_smoothing: float = 0.1
    weight_decay: float = 1e-4
    decay_biases: bool = False
    precision: str = "fp32"
    # Loop
    mode: str = "train"
    max_train_steps: int | None = None
    max_epochs: float = 150.0
    epochs_between_evals: float = 5.0
    iterations_per_loop: int = 10
    display_every: int = 100
    log_name: str = "train.log"
    log_dir: str = "runs/vgg16"
    save_checkpoints_steps: int | None = None
    keep_checkpoint_max: int = 5
    restore_path: str | None = None
    restore_exclude: list[str] = field(default_factory=lambda: ["predictions"])
    weights: str | None = None
    eval_dir: str | None = None
    seed: int = 0
    nan_policy: str = "stop"
    overwrite: bool = False
    # Runtime
    distribution: str = "auto"
    devices: list[str] | None = None
    rank_size: int = 1
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    xla: bool = False
    progress: bool = True

    @property
    def piecewise_values(self) -> list[float]:
        """The piecewise LR values; by default lr, lr/10, lr/100, ... one more than boundaries."""
        if self.lr_values:
            return list(self.lr_values)
        return [self.lr * 0.1**i for i in range(len(self.lr_boundaries) + 1)]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


PRESETS: dict[str, dict] = {
    "imagenet": {},
    "demo": {
        "data_dir": DEMO_DATA_DIR,
        "class_num": 10,
        "image_size": 32,
        "width_multiplier": 0.25,
        "dropout": 0.0,
        "dense_init": "he",
        "batch_size": 32,
        "lr": 0.03,
        "lr_schedule": "cosine",
        "T_max": 20.0,
        "warmup_epochs": 2.0,  # 1 left seed 0 at chance for 10 epochs with the new crop stream
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

CHOICES = {
    "arch": ("vgg16", "vgg19"),
    "dense_init": ("normal", "he"),
    "lr_schedule": ("piecewise", "cosine"),
    "precision": ("fp32", "bf16", "fp16"),
    "mode": ("train", "evaluate", "train_and_evaluate"),
    "nan_policy": ("stop", "skip_step"),
    "distribution": ("auto", "none", "mirrored", "multi_worker", "npu"),
    "preprocess": ("imagenet", "caffe"),
}

HELP = {
    "arch": "network: vgg16 or vgg19",
    "class_num": "number of classes (ImageNet: 1000)",
    "image_size": "training/eval crop size in pixels",
    "width_multiplier": "scales every layer's width (1.0 = the published network)",
    "dropout": "dropout rate after fc1 and fc2",
    "dense_init": "fc1/fc2 init: normal (N(0, 0.01), published) or he (for width-scaled nets)",
    "data_dir": "folder of train-*/validation-* TFRecord shards, or tfds:NAME[:split]",
    "tfds_data_dir": "data_dir of a TFDS-prepared dataset (with --data_dir tfds:NAME)",
    "synthetic": "device-resident random data of the same shapes (throughput upper bound)",
    "label_offset": "subtracted from stored labels (TF-slim ImageNet: 1, since 0 is background)",
    "shuffle_buffer": "records in the training shuffle buffer",
    "min_object_covered": "random crop: minimum fraction of the bounding box kept",
    "area_range": "random crop: min,max fraction of the image area",
    "aspect_ratio_range": "random crop: min,max aspect ratio",
    "skip_corrupt": "skip unreadable records (and count them) instead of stopping",
    "preprocess": "input normalisation: imagenet (mean/std, RGB) or caffe (BGR minus mean, "
    "what the published Keras weights expect)",
    "batch_size": "images per replica per step",
    "eval_batch_size": "images per eval batch (default: --batch_size)",
    "lr": "base learning rate",
    "lr_schedule": "piecewise or cosine",
    "lr_boundaries": "piecewise: epoch boundaries, comma-separated",
    "lr_values": "piecewise: values, one more than boundaries (default: lr, lr/10, ...)",
    "T_max": "cosine: epochs until eta_min",
    "eta_min": "cosine: final learning rate",
    "warmup_epochs": "linear warmup from 0 over this many epochs",
    "scale_lr": "linear scaling rule: lr = lr * global_batch / 256",
    "momentum": "momentum",
    "use_nesterov": "Nesterov momentum",
    "label_smoothing": "label smoothing of the cross-entropy",
    "weight_decay": "L2 weight decay factor on kernels",
    "decay_biases": "also decay biases (as the reference did)",
    "precision": "fp32, bf16 or fp16 (mixed precision via the Keras policy)",
    "mode": "train, evaluate or train_and_evaluate",
    "max_train_steps": "stop after this many global steps (overrides --max_epochs)",
    "max_epochs": "epochs to train",
    "epochs_between_evals": "train_and_evaluate: epochs between evaluations",
    "iterations_per_loop": "training steps per session call (loop sinking)",
    "display_every": "steps between log lines",
    "log_name": "log file name inside --log_dir",
    "log_dir": "checkpoints, logs, metrics.jsonl, config.json, TensorBoard events",
    "save_checkpoints_steps": "steps between checkpoints (default: one epoch)",
    "keep_checkpoint_max": "checkpoints kept",
    "restore_path": "initialise from this checkpoint (fine-tuning)",
    "restore_exclude": "with --restore_path or --weights: scopes (layers) not loaded, "
    "comma-separated",
    "weights": "initialise from keras_imagenet:PATH, a keras.applications VGG16/VGG19 .h5 "
    "weight file, by layer name (never downloaded)",
    "eval_dir": "checkpoint folder to evaluate (default: --log_dir)",
    "seed": "random seed (weight init, dropout, shuffling, augmentation)",
    "nan_policy": "on NaN/Inf loss: stop, or skip_step (discard the update)",
    "overwrite": "allow a fresh start in a log_dir holding another configuration's run",
    "distribution": "none, mirrored (local GPUs), multi_worker (TF_CONFIG), npu (Ascend), or "
    "auto: multi_worker under TF_CONFIG, mirrored with --devices or >1 GPU, npu where "
    "npu_bridge imports, else none",
    "devices": "mirrored: devices, comma-separated (default: all GPUs); cpu:0,cpu:1 splits "
    "the host CPU into two devices",
    "rank_size": "npu: devices (processes) in the job, with RANK_ID and RANK_TABLE_FILE set",
    "intra_op_threads": "threads inside one op (0: TensorFlow's choice)",
    "inter_op_threads": "ops run in parallel (0: TensorFlow's choice)",
    "xla": "XLA auto-clustering",
    "progress": "show tqdm progress bars",
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
        try:
            return [kind(p) for p in str(text).split(",") if p.strip()]
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list: {text!r}") from err

    parse.__name__ = f"list of {kind.__name__}"
    return parse


def _flag_type(f: dataclasses.Field):
    """argparse type for a dataclass field, read from its annotation string."""
    ann = str(f.type)
    if "list[float]" in ann:
        return _list_of(float)
    if "list[str]" in ann:
        return _list_of(str)
    if ann.startswith("bool"):
        return str2bool
    if ann.startswith("int"):
        return int
    if ann.startswith("float"):
        return float
    return str


class UsageParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors become a UsageError (one line, exit code 2)."""

    def error(self, message: str):
        raise UsageError(message)


def add_config_flags(parser: argparse.ArgumentParser, names=None) -> None:
    """Add one flag per Config field (all of them, or those in ``names``); defaults are None."""
    for f in dataclasses.fields(Config):
        if names is not None and f.name not in names:
            continue
        kwargs = {"type": _flag_type(f), "default": None, "help": HELP.get(f.name)}
        if f.name in CHOICES:
            kwargs["choices"] = CHOICES[f.name]
        if kwargs["type"] is str2bool:
            kwargs.update(nargs="?", const=True)
        flags = [f"--{f.name}"]
        if f.name == "precision":
            flags.append("--dtype")  # the reference's name
        parser.add_argument(*flags, dest=f.name, **kwargs)


def train_parser() -> argparse.ArgumentParser:
    parser = UsageParser(
        prog="run_train.py",
        description="Train VGG16/VGG19 on TF-slim ImageNet TFRecords.",
    )
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="imagenet", help="starting defaults"
    )
    add_config_flags(parser)
    return parser


def make_config(preset: str = "imagenet", **overrides) -> Config:
    """A validated Config from a preset plus explicit overrides (None values are ignored)."""
    values = dict(PRESETS[preset])
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = Config(**values)
    validate(config)
    return config


def from_args(argv: list[str] | None = None) -> Config:
    args = vars(train_parser().parse_args(argv))
    preset = args.pop("preset")
    return make_config(preset, **args)


def validate(c: Config) -> None:
    """Reject values that cannot work, naming the flag."""

    def need(ok: bool, flag: str, message: str) -> None:
        if not ok:
            raise UsageError(f"--{flag}: {message}")

    for name, choices in CHOICES.items():
        need(getattr(c, name) in choices, name, f"must be one of {', '.join(choices)}")
    need(c.class_num >= 2, "class_num", f"needs at least 2 classes, got {c.class_num}")
    need(c.image_size >= 32, "image_size", f"must be at least 32 (5 max-pools), got {c.image_size}")
    need(c.width_multiplier > 0, "width_multiplier", f"must be > 0, got {c.width_multiplier}")
    need(0 <= c.dropout < 1, "dropout", f"must be in [0, 1), got {c.dropout}")
    need(c.batch_size >= 1, "batch_size", f"must be >= 1, got {c.batch_size}")
    need(
        c.eval_batch_size is None or c.eval_batch_size >= 1,
        "eval_batch_size",
        f"must be >= 1, got {c.eval_batch_size}",
    )
    need(c.lr > 0, "lr", f"must be > 0, got {c.lr}")
    need(c.momentum >= 0, "momentum", f"must be >= 0, got {c.momentum}")
    need(
        0 <= c.label_smoothing < 1, "label_smoothing", f"must be in [0, 1), got {c.label_smoothing}"
    )
    need(c.weight_decay >= 0, "weight_decay", f"must be >= 0, got {c.weight_decay}")
    need(c.T_max > 0, "T_max", f"must be > 0 epochs, got {c.T_max}")
    need(c.eta_min >= 0, "eta_min", f"must be >= 0, got {c.eta_min}")
    need(c.warmup_epochs >= 0, "warmup_epochs", f"must be >= 0, got {c.warmup_epochs}")
    need(
        list(c.lr_boundaries) == sorted(c.lr_boundaries) and all(b > 0 for b in c.lr_boundaries),
        "lr_boundaries",
        f"must be positive and increasing, got {c.lr_boundaries}",
    )
    if c.lr_values is not None:
        need(
            len(c.lr_values) == len(c.lr_boundaries) + 1,
            "lr_values",
            f"needs {len(c.lr_boundaries) + 1} values for {len(c.lr_boundaries)} boundaries, "
            f"got {len(c.lr_values)}",
        )
        need(all(v >= 0 for v in c.lr_values), "lr_values", "must be >= 0")
    need(
        c.max_train_steps is None or c.max_train_steps >= 1,
        "max_train_steps",
        f"must be >= 1, got {c.max_train_steps}",
    )
    need(c.max_epochs > 0, "max_epochs", f"must be > 0, got {c.max_epochs}")
    need(c.epochs_between_evals > 0, "epochs_between_evals", "must be > 0")
    need(
        c.iterations_per_loop >= 1,
        "iterations_per_loop",
        f"must be >= 1, got {c.iterations_per_loop}",
    )
    need(c.display_every >= 1, "display_every", f"must be >= 1, got {c.display_every}")
    need(
        c.save_checkpoints_steps is None or c.save_checkpoints_steps >= 1,
        "save_checkpoints_steps",
        "must be >= 1",
    )
    need(c.keep_checkpoint_max >= 1, "keep_checkpoint_max", "must be >= 1")
    need(c.rank_size >= 1, "rank_size", f"must be >= 1, got {c.rank_size}")
    need(c.shuffle_buffer >= 1, "shuffle_buffer", "must be >= 1")
    need(0 <= c.min_object_covered <= 1, "min_object_covered", "must be in [0, 1]")
    need(
        len(c.area_range) == 2 and 0 < c.area_range[0] <= c.area_range[1] <= 1,
        "area_range",
        f"must be two fractions min,max in (0, 1], got {c.area_range}",
    )
    need(
        len(c.aspect_ratio_range) == 2 and 0 < c.aspect_ratio_range[0] <= c.aspect_ratio_range[1],
        "aspect_ratio_range",
        f"must be two ratios min,max, got {c.aspect_ratio_range}",
    )
    need(c.log_name and os.sep not in c.log_name, "log_name", "must be a file name, not a path")
    need(
        c.synthetic or c.data_dir is not None,
        "data_dir",
        "is required (or use --synthetic, or --preset demo)",
    )
    if c.weights is not None:
        need(
            c.weights.startswith(WEIGHTS_PREFIX) and len(c.weights) > len(WEIGHTS_PREFIX),
            "weights",
            f"expected {WEIGHTS_PREFIX}PATH, got {c.weights!r}",
        )
        need(c.restore_path is None, "weights", "use either --weights or --restore_path")
