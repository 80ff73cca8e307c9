"""Every setting, declared once: its type, default, bounds, choices, flag names and help.

A run's settings are a frozen ``Config`` of five frozen parts, each passed whole to the code that
reads it: ``network`` (what a checkpoint holds and how it computes), ``input`` (the data and its
preprocessing), ``optimizer`` (the update and its learning rate), ``loop`` (the run's length,
intervals, folder and seed) and ``runtime`` (how this process runs; never inherited from a run's
config.json).  Flags keep one flat name space (the reference implementation's names:
``--rank_size --mode --max_train_steps --iterations_per_loop ... --class_num``).

``resolve`` is the one way a Config is made, whichever way the values arrive (flags, a
``--config`` file, a run's config.json, the Python API): each value is read and checked against
its field's declaration (type, range, finiteness, choices) in ``Setting.read``, then the rules
that tie settings together are checked in ``_check``.  Nothing below this module repeats a
default or re-checks a choice.  No TensorFlow here, so a bad flag is answered at once.

The annotations use ``typing.Optional``/``typing.Tuple`` so that ``typing.get_type_hints`` can
evaluate them on every Python this project supports (3.7 included).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional, Tuple

from vgg_keras import arch, documents, rundir
from vgg_keras.errors import UsageError

DEMO_DATA_DIR = "data/demo"
KERAS_WEIGHTS = "keras_imagenet:"  # --weights keras_imagenet:PATH, a keras.applications file
IMAGENET_WEIGHTS = "imagenet"  # --weights imagenet: that file from Keras' cache or its URL
FLOAT32_MAX = 3.4028234663852886e38
INT_LIMIT = 2**62  # what TensorFlow's int64 and numpy take without overflow
SEED_MAX = 2**31 - 1 - 10_000  # numpy seeds are 32-bit; layers add their index
# The seed's learning-rate table changes at these steps of 5,004 steps per epoch (1,281,167
# images // 256); its `elif i > 625000` keeps 1e-4 through step 625,000.
REFERENCE_STEPS_PER_EPOCH = 5004
REFERENCE_LR_STEPS = (330_000, 520_000, 625_001)
REFERENCE_LR_EPOCHS = tuple(s / REFERENCE_STEPS_PER_EPOCH for s in REFERENCE_LR_STEPS)


def setting(
    default,
    help: str,
    *,
    choices=None,
    at_least=None,
    above=None,
    at_most=None,
    below=None,
    length: int | None = None,
    aliases=(),
    synonyms=None,
    identity: bool = False,
    evaluation: bool = False,
):
    """A field with everything its flag and its check need.

    Bounds apply to a number or to each element of a list; ``length`` is a list's.
    ``synonyms`` are other spellings of values (the reference's), read as the value they name.
    ``identity``: the network a checkpoint holds (a run folder keeps them; export and predict
    take them as flags).  ``evaluation``: evaluation needs it too (run_eval.py's flags).
    """
    metadata = {
        "help": help,
        "choices": tuple(choices) if choices else None,
        "bounds": (at_least, above, at_most, below),
        "length": length,
        "aliases": tuple(aliases),
        "synonyms": dict(synonyms or {}),
        "identity": identity,
        "evaluation": evaluation or identity,
    }
    return field(default=default, metadata=metadata)


# ---------------------------------------------------------------------------------------------
# The parts of a Config


@dataclass(frozen=True)
class Network:
    arch: str = setting(
        "vgg16",
        "network: vgg11, vgg13, vgg16, vgg19, or the same with batch norm (vgg16_bn ...)",
        choices=arch.NAMES,
        identity=True,
    )
    class_num: int = setting(
        1000, "number of classes (ImageNet: 1000)", at_least=2, at_most=1_000_000, identity=True
    )
    image_size: int = setting(
        224, "training/eval crop size in pixels", at_least=32, at_most=4096, identity=True
    )
    width_multiplier: float = setting(
        1.0,
        "scales every layer's width (1.0 = the published network)",
        above=0,
        at_most=16,
        identity=True,
    )
    preprocess: str = setting(
        "imagenet",
        "input normalisation: imagenet (mean/std, RGB) or caffe (BGR minus mean, what the "
        "published Keras weights expect)",
        choices=("imagenet", "caffe"),
        identity=True,
    )
    precision: str = setting(
        "fp32",
        "fp32, bf16 or fp16 (mixed precision via the Keras policy)",
        choices=("fp32", "bf16", "fp16"),
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
        evaluation=True,
    )
    dropout: float = setting(0.5, "dropout rate after fc1 and fc2", at_least=0, below=1)
    conv_init: str = setting(
        "fan_out",
        "conv init, truncated normal: He on fan_out (the reference's: keeps the gradients' "
        "scale) or on fan_in (keeps the forward signal; the demo's)",
        choices=("fan_out", "fan_in"),
    )
    dense_init: str = setting(
        "normal",
        "fc1/fc2 init: normal (N(0, 0.01), the reference's) or he (for width-scaled nets)",
        choices=("normal", "he"),
    )
    trainable_from: Optional[str] = setting(
        None,
        "train only this layer and those after it (block4, block5_conv2, fc1, predictions): "
        "the base before it stays as loaded, its batch norm in inference mode (default: every "
        "layer trains)",
    )


@dataclass(frozen=True)
class Input:
    data_dir: Optional[str] = setting(
        None,
        "folder of train-*/validation-* TFRecord shards, or tfds:NAME[:split]",
        aliases=("--datadir", "--data_path"),  # the reference's README and test scripts
        evaluation=True,
    )
    tfds_data_dir: Optional[str] = setting(
        None, "data_dir of a TFDS-prepared dataset (with --data_dir tfds:NAME)", evaluation=True
    )
    synthetic: bool = setting(
        False, "device-resident random data of the same shapes (throughput upper bound)"
    )
    input_mode: str = setting(
        "standard",
        "standard, or reference: the reference's input tensors exactly (its JPEG decode "
        "options, TF 1's resize without half-pixel centres, the 256x256 squash before the "
        "central crop)",
        choices=("standard", "reference"),
        evaluation=True,
    )
    label_offset: int = setting(
        1,
        "subtracted from stored labels (TF-slim ImageNet: 1, since 0 is background)",
        at_least=-INT_LIMIT,
        at_most=INT_LIMIT,
        evaluation=True,
    )
    batch_size: int = setting(256, "images per replica per step", at_least=1, at_most=65536)
    eval_batch_size: Optional[int] = setting(
        None,
        "images per eval batch (default: --batch_size)",
        at_least=1,
        at_most=65536,
        evaluation=True,
    )
    shuffle_buffer: int = setting(
        10000, "records in the training shuffle buffer", at_least=1, at_most=2**31 - 1
    )
    min_object_covered: float = setting(
        0.1, "random crop: minimum fraction of the bounding box kept", at_least=0, at_most=1
    )
    area_range: Tuple[float, ...] = setting(
        (0.08, 1.0), "random crop: min,max fraction of the image area", above=0, at_most=1, length=2
    )
    aspect_ratio_range: Tuple[float, ...] = setting(
        (0.75, 1.333), "random crop: min,max aspect ratio", above=0, at_most=100, length=2
    )
    eval_resize: Optional[str] = setting(
        None,
        "evaluation: before the central crop, resize the shorter side to image_size*256/224 "
        "(aspect; standard input's default) or the whole image to that square (square; "
        "reference input's)",
        choices=("aspect", "square"),
        evaluation=True,
    )
    skip_corrupt: bool = setting(
        False, "skip unreadable records (and count them) instead of stopping", evaluation=True
    )

    @property
    def resize(self) -> str:
        """The evaluation resize: --eval_resize, else the input mode's."""
        return self.eval_resize or ("square" if self.input_mode == "reference" else "aspect")


@dataclass(frozen=True)
class Optimizer:
    lr: float = setting(0.01, "base learning rate", above=0)
    lr_schedule: str = setting(
        "piecewise",
        "piecewise, cosine (per step) or cosine_epoch (constant within each epoch, as the "
        "reference's VGG16 and torchvision step it)",
        choices=("piecewise", "cosine", "cosine_epoch"),
    )
    lr_boundaries: Tuple[float, ...] = setting(
        REFERENCE_LR_EPOCHS,
        "piecewise: epochs at which the rate drops, comma-separated (default: the reference's "
        "steps 330000, 520000, 625001 at 5004 steps per epoch)",
        above=0,
    )
    lr_values: Optional[Tuple[float, ...]] = setting(
        None, "piecewise: values, one more than boundaries (default: lr, lr/10, ...)", at_least=0
    )
    # at_most: cosine_epoch holds one rate per epoch up to T_max in the graph
    T_max: float = setting(150.0, "cosine: epochs until eta_min", above=0, at_most=1e5)
    eta_min: float = setting(0.0, "cosine: final learning rate", at_least=0)
    warmup_epochs: float = setting(
        0.0,
        "linear warmup over this many epochs: step k (from 0) gets (k+1)/warmup_steps of lr",
        at_least=0,
        at_most=1e6,
    )
    scale_lr: bool = setting(False, "linear scaling rule: lr = lr * global_batch / 256")
    momentum: float = setting(0.9, "momentum", at_least=0, at_most=1)
    use_nesterov: bool = setting(True, "Nesterov momentum")
    label_smoothing: float = setting(
        0.1, "label smoothing of the cross-entropy", at_least=0, below=1
    )
    weight_decay: float = setting(1e-4, "L2 weight decay factor", at_least=0)
    decay_biases: bool = setting(
        True,
        "decay every trainable variable, biases included, as the reference does (false: "
        "kernels only)",
    )
    clip_grad_norm: float = setting(
        0.0,
        "clip each step's gradient to this global norm (0: off, the reference's); keeps one "
        "outsized step from knocking a plain VGG back to chance (the demo's: 5)",
        at_least=0,
    )
    accumulation_steps: int = setting(
        1,
        "micro-batches per optimizer step (gradient accumulation): the global batch is "
        "accumulation_steps x batch_size x replicas, so a device too small for the recipe's "
        "batch keeps it (4 x 64 = 256)",
        at_least=1,
        at_most=4096,
        aliases=("--gradient_accumulation_steps",),
    )
    nan_policy: str = setting(
        "stop",
        "on NaN/Inf loss: stop, or skip_step (discard the update)",
        choices=("stop", "skip_step"),
    )

    @property
    def piecewise_values(self) -> tuple[float, ...]:
        """The piecewise values; by default lr, lr/10, lr/100, ... (the reference's divisions)."""
        if self.lr_values:
            return tuple(self.lr_values)
        return tuple(self.lr / 10**i for i in range(len(self.lr_boundaries) + 1))

    def boundary_steps(self, steps_per_epoch: int) -> list[int]:
        """The steps of the piecewise drops (the boundaries are in epochs)."""
        return [int(round(b * steps_per_epoch)) for b in self.lr_boundaries]


@dataclass(frozen=True)
class Loop:
    mode: str = setting(
        "train_and_evaluate",
        "train, evaluate (every checkpoint in --eval_dir) or train_and_evaluate (evaluate every "
        "--epochs_between_evals epochs; trains only with --synthetic and no --data_dir)",
        choices=("train", "evaluate", "train_and_evaluate"),
    )
    max_train_steps: Optional[int] = setting(
        None,
        "stop after this many global steps (overrides --max_epochs)",
        at_least=1,
        at_most=INT_LIMIT,
    )
    max_epochs: float = setting(150.0, "epochs to train", above=0, at_most=1e6)
    epochs_between_evals: float = setting(
        5.0, "train_and_evaluate: epochs between evaluations", above=0, at_most=1e6
    )
    iterations_per_loop: int = setting(
        10, "training steps per session call (loop sinking)", at_least=1, at_most=1_000_000
    )
    display_every: int = setting(100, "steps between log lines", at_least=1, at_most=INT_LIMIT)
    log_name: str = setting("train.log", "log file name inside --log_dir")
    log_dir: str = setting(
        "runs/vgg16", "checkpoints, logs, metrics.jsonl, config.json, TensorBoard events"
    )
    save_checkpoints_steps: Optional[int] = setting(
        None, "steps between checkpoints (default: one epoch)", at_least=1, at_most=INT_LIMIT
    )
    keep_checkpoint_max: int = setting(5, "checkpoints kept", at_least=1, at_most=1_000_000)
    resume: Optional[str] = setting(
        None,
        "resume from this checkpoint (a model.ckpt-N prefix, or a folder: its newest) rather than "
        "from the newest in --log_dir",
    )
    restore_path: Optional[str] = setting(None, "initialise from this checkpoint (fine-tuning)")
    restore_exclude: Tuple[str, ...] = setting(
        ("predictions",),
        "with --restore_path or --weights: scopes (layers) not loaded, comma-separated (the "
        "reference's names too: dense_2, global_step)",
    )
    weights: Optional[str] = setting(
        None,
        "initialise from published weights: imagenet (keras.applications' VGG16/VGG19 file, "
        "from Keras' cache or downloaded) or keras_imagenet:PATH (such a file)",
    )
    eval_dir: Optional[str] = setting(None, "checkpoint folder to evaluate (default: --log_dir)")
    seed: int = setting(
        0,
        "random seed (weight init, dropout, shuffling, augmentation)",
        at_least=0,
        at_most=SEED_MAX,
    )
    overwrite: bool = setting(False, "allow a fresh start over a log_dir holding another run")
    allow_change: Tuple[str, ...] = setting(
        (), "a resume may change these, comma-separated (batch_size, lr, seed, replicas, ...)"
    )


@dataclass(frozen=True)
class Runtime:
    distribution: str = setting(
        "auto",
        "none, mirrored (local GPUs), multi_worker (TF_CONFIG), npu (Ascend), or auto: "
        "multi_worker under TF_CONFIG, mirrored with --devices or >1 GPU, npu where npu_bridge "
        "imports, else none",
        choices=("auto", "none", "mirrored", "multi_worker", "npu"),
    )
    devices: Optional[Tuple[str, ...]] = setting(
        None,
        "mirrored: devices, comma-separated (default: all GPUs); cpu:0,cpu:1 splits the host "
        "CPU into two devices",
    )
    rank_size: int = setting(
        1,
        "npu: devices (processes) in the job, with RANK_ID, RANK_SIZE and RANK_TABLE_FILE set",
        at_least=1,
        at_most=65536,
    )
    intra_op_threads: int = setting(
        0,
        "threads inside one op (0: TensorFlow's choice)",
        at_least=0,
        at_most=4096,
        evaluation=True,
    )
    inter_op_threads: int = setting(
        0,
        "ops run in parallel (0: in training on one CPU device, one at a time when each step's "
        "ops fill the cores, VGG16's at 224 px from batch 11 on 2 cores; else TensorFlow's "
        "choice)",
        at_least=0,
        at_most=4096,
        evaluation=True,
    )
    xla: bool = setting(
        False,
        "XLA auto-clustering, on GPUs and CPUs (on CPUs it trained slower than TensorFlow 2's "
        "oneDNN kernels and faster than TensorFlow 1.15's: docs/performance.md)",
        evaluation=True,
    )
    progress: bool = setting(True, "show tqdm progress bars", evaluation=True)


PARTS = {"network": Network, "input": Input, "optimizer": Optimizer, "loop": Loop}
PARTS["runtime"] = Runtime


@dataclass(frozen=True)
class Config:
    """A run's validated settings (use ``resolve`` to make one)."""

    network: Network = field(default_factory=Network)
    input: Input = field(default_factory=Input)
    optimizer: Optimizer = field(default_factory=Optimizer)
    loop: Loop = field(default_factory=Loop)
    runtime: Runtime = field(default_factory=Runtime)

    def value(self, name: str):
        return getattr(getattr(self, SETTINGS[name].part), name)

    def flat(self) -> dict:
        """{setting name: value} with lists for tuples: config.json's content."""
        return {name: rundir.plain(self.value(name)) for name in SETTINGS}

    def resume_changes(self, saved: dict, source: str, counts: dict) -> list[tuple]:
        """(name, saved value, ours, RESUME's kind) for each setting a resume may not change
        freely that ``saved`` (a run's config.json, read from ``source``) holds otherwise, and
        for each changed count in ``counts`` ({name: (recorded, now)})."""
        changes = [(name, *pair, RESUME_KIND[name]) for name, pair in counts.items()]
        for name in INHERITED:
            if name in saved and RESUME_KIND[name] != "free":
                old = SETTINGS[name].read(saved[name], source)
                if old != self.value(name):
                    changes.append((name, old, self.value(name), RESUME_KIND[name]))
        return changes

    def to_json(self) -> str:
        return json.dumps(self.flat(), indent=2, sort_keys=True)

    def replace(self, **values) -> Config:
        """This config with some settings changed, checked like any other."""
        return resolve(settings={**self.flat(), **values}, need_data=False, source="")


# ---------------------------------------------------------------------------------------------
# Reading and checking one value


@dataclasses.dataclass(frozen=True)
class Setting:
    """One declared setting: where it lives and how a value of it is read and checked."""

    name: str
    part: str
    kind: type  # int, float, str or bool (of each element, for a list)
    is_list: bool
    optional: bool
    metadata: dict

    @property
    def flag(self) -> str:
        return f"--{self.name}"

    def read(self, value, source: str = ""):
        """``value`` (text as a flag gives it, or a JSON/Python value) as this setting's type,
        checked; a UsageError names the source and the setting otherwise."""
        where = f"{source}: {self.name}" if source else self.flag
        try:
            value = self._convert(value)
            self._check(value)
        except ValueError as err:
            raise UsageError(f"{where}: {err}") from None
        return value

    def _convert(self, value):
        if value is None:
            if self.optional:
                return None
            raise ValueError("must be given (null is not a value here)")
        if isinstance(value, str):
            value = self.metadata["synonyms"].get(value, value)
        if not self.is_list:
            return _scalar(self.kind, value)
        if isinstance(value, str):
            # Also the reference's Python-literal lists: "['dense_2','global_step']".
            parts = [p.strip(" '\"") for p in value.strip().strip("[]").split(",")]
            value = [p for p in parts if p]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected a comma-separated list, got {value!r}")
        return tuple(_scalar(self.kind, item) for item in value)

    def _check(self, value) -> None:
        if value is None:
            return
        meta = self.metadata
        items = value if self.is_list else (value,)
        if meta["length"] is not None and len(items) != meta["length"]:
            raise ValueError(f"expected {meta['length']} values min,max, got {_shown(value)}")
        for item in items:
            if meta["choices"] and item not in meta["choices"]:
                raise ValueError(
                    f"must be one of {', '.join(map(str, meta['choices']))}, got {item!r}"
                )
            if self.kind in (int, float):
                _check_number(item, meta["bounds"], _shown(value))


def _scalar(kind: type, value):
    """``value`` as ``kind``: text is parsed as a flag would parse it; a bool is never a
    number, a fraction never an integer."""
    if kind is bool:
        text = value.strip().lower() if isinstance(value, str) else value
        if text is True or text in ("1", "true", "yes", "y", "on"):
            return True
        if text is False or text in ("0", "false", "no", "n", "off"):
            return False
        raise ValueError(f"expected true or false, got {value!r}")
    if kind is str:
        if isinstance(value, str) and value:
            return value
        raise ValueError(f"expected a non-empty text, got {value!r}")
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    expected = f"expected {'an integer' if kind is int else 'a number'}, got {value!r}"
    if isinstance(value, str):
        try:
            value = kind(value.strip())
        except ValueError:
            raise ValueError(expected) from None
    if kind is int:
        if isinstance(value, float) and value.is_integer() and abs(value) < INT_LIMIT:
            value = int(value)
        if not isinstance(value, int):
            raise ValueError(expected)
        return value
    if not isinstance(value, (int, float)):
        raise ValueError(expected)
    try:
        return float(value)
    except OverflowError:  # an integer beyond any float
        raise ValueError(
            f"is too large, got {str(value)[:12]}... ({len(str(value))} digits)"
        ) from None


def _check_number(value, bounds, shown: str) -> None:
    at_least, above, at_most, below = bounds
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {shown}")
    if abs(value) > (FLOAT32_MAX if isinstance(value, float) else INT_LIMIT):
        raise ValueError(f"is too large, got {shown}")
    for limit, ok, words in (
        (at_least, lambda v, x: v >= x, ">="),
        (above, lambda v, x: v > x, ">"),
        (at_most, lambda v, x: v <= x, "<="),
        (below, lambda v, x: v < x, "<"),
    ):
        if limit is not None and not ok(value, limit):
            raise ValueError(f"must be {words} {limit:g}, got {shown}")


def _shown(value) -> str:
    if isinstance(value, tuple):
        return ",".join(_shown(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def declared_settings(cls, part: str) -> list[Setting]:
    """The Settings of the dataclass fields ``cls`` declares with ``setting`` (a part of a
    Config, or a program's own options in cli.py)."""
    hints, found = typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = getattr(hint, "__args__", None) or ()
        optional = getattr(hint, "__origin__", None) is typing.Union
        if optional:
            hint = next(a for a in args if a is not type(None))
            args = getattr(hint, "__args__", None) or ()
        is_list = getattr(hint, "__origin__", None) in (tuple, Tuple)
        kind = args[0] if is_list else hint
        found.append(Setting(f.name, part, kind, is_list, optional, dict(f.metadata)))
    return found


SETTINGS = {s.name: s for part, cls in PARTS.items() for s in declared_settings(cls, part)}
IDENTITY = tuple(n for n, s in SETTINGS.items() if s.metadata["identity"])
EVALUATION = tuple(n for n, s in SETTINGS.items() if s.metadata["evaluation"])
INHERITED = tuple(n for n, s in SETTINGS.items() if s.part != "runtime")

# What a resume may change, for every setting and the two counts config.json's run record keeps
# besides the settings (replicas; train_images: the data itself, wherever data_dir now is):
# fixed (the network the checkpoint holds), ask (the data, its order, the batch, the schedule,
# the recipe: refused unless --allow_change NAME), note (printed) or free.  batch_size,
# accumulation_steps and replicas ask only when they change the global batch.
RESUME = {
    "fixed": ("arch", "class_num", "image_size", "width_multiplier"),
    "ask": (
        *("replicas", "batch_size", "accumulation_steps", "train_images", "synthetic"),
        *("label_offset", "preprocess", "input_mode", "shuffle_buffer", "min_object_covered"),
        *("area_range", "aspect_ratio_range", "seed", "lr", "lr_schedule", "lr_boundaries"),
        *("lr_values", "T_max", "eta_min", "warmup_epochs", "scale_lr", "dropout"),
        *("trainable_from", "momentum", "use_nesterov", "label_smoothing", "weight_decay"),
        *("decay_biases", "clip_grad_norm"),
    ),
    "note": ("precision", "data_dir"),
    "free": (
        *("conv_init", "dense_init", "tfds_data_dir", "eval_batch_size", "eval_resize"),
        *("skip_corrupt", "nan_policy", "mode", "max_train_steps", "max_epochs"),
        *("epochs_between_evals", "iterations_per_loop", "display_every", "log_name", "log_dir"),
        *("save_checkpoints_steps", "keep_checkpoint_max", "resume", "restore_path"),
        *("restore_exclude", "weights", "eval_dir", "overwrite", "allow_change", "distribution"),
        *("devices", "rank_size", "intra_op_threads", "inter_op_threads", "xla", "progress"),
    ),
}
RESUME_KIND = {name: kind for kind, names in RESUME.items() for name in names}


# ---------------------------------------------------------------------------------------------
# Presets and resolution


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
        "decay_biases": False,
        "max_epochs": 20.0,
        "epochs_between_evals": 5.0,
        "area_range": (0.6, 1.0),
        "aspect_ratio_range": (0.85, 1.18),
        "shuffle_buffer": 2000,
        "display_every": 50,
        "log_dir": "runs/demo",
        "mode": "train_and_evaluate",
    },
    # A few hundred images of your own, trained from scratch: a small batch-normalised VGG.
    "small": {
        "arch": "vgg11_bn",
        "image_size": 64,
        "width_multiplier": 0.25,
        "dropout": 0.3,
        "dense_init": "he",
        "batch_size": 16,
        "lr": 0.02,
        "lr_schedule": "cosine",
        "T_max": 40.0,
        "max_epochs": 40.0,
        "warmup_epochs": 2.0,
        "epochs_between_evals": 5.0,
        "area_range": (0.35, 1.0),
        "shuffle_buffer": 2000,
        "display_every": 20,
        "log_dir": "runs/small",
    },
    # The published VGG16 (--weights imagenet) with a new head on a few hundred images: the
    # base frozen, the fully connected layers trained afresh, at a size a CPU trains in minutes.
    "finetune": {
        "weights": IMAGENET_WEIGHTS,
        "preprocess": "caffe",
        "image_size": 128,
        "restore_exclude": ("fc1", "fc2", "predictions"),
        "trainable_from": "fc1",
        "dense_init": "he",
        "batch_size": 16,
        "lr": 0.005,
        "lr_schedule": "cosine",
        "T_max": 10.0,
        "max_epochs": 10.0,
        "epochs_between_evals": 1.0,
        "keep_checkpoint_max": 2,  # a checkpoint holds the 50 M weights of the head twice
        "area_range": (0.35, 1.0),
        "shuffle_buffer": 2000,
        "display_every": 10,
        "log_dir": "runs/finetune",
    },
}


def resolve(
    preset: str = "imagenet",
    settings: Optional[dict] = None,
    *,
    saved: Optional[dict] = None,
    settings_file: Optional[str] = None,
    need_data: bool = True,
    dataset_classes: Optional[Callable[[str, int], Optional[int]]] = None,
    source: str = "",
    saved_source: str = "config.json",
) -> Config:
    """The one way a Config is made: defaults <- ``preset`` <- a run's config.json (``saved``,
    without the runtime settings) <- a --config file (``settings_file``, all of it) <-
    ``settings`` given (flags or keyword arguments; None means not given).  ``settings_file``
    is the --config file's path.

    Every value is read and checked by its Setting (naming ``source``: "" for flags, else a
    file or "train()"); a name that is not a setting is refused, except in ``saved`` (a
    config.json of another version keeps working).  ``dataset_classes(data_dir, label_offset)``
    gives the classes the dataset's labels need (training and evaluation pass
    data.info's; export and predict compare the class count with the checkpoint instead).
    """
    if not isinstance(preset, str) or preset not in PRESETS:
        raise UsageError(f"--preset: must be one of {', '.join(PRESETS)}, got {preset!r}")
    values = {name: SETTINGS[name].read(v, "preset") for name, v in PRESETS[preset].items()}
    for name, value in (saved or {}).items():
        if name in INHERITED:
            values[name] = SETTINGS[name].read(value, saved_source)
    from_file = read_settings_file(settings_file) if settings_file is not None else {}
    values.update(read_all(from_file, f"--config {settings_file}"))
    given = {k: v for k, v in (settings or {}).items() if v is not None}
    values.update(read_all(given, source))
    if need_data and dataset_classes is not None:
        chosen = any("class_num" in d for d in (given, saved or {}, from_file))
        _class_num_from_data(values, dataset_classes, chosen)
    parts = {p: {n: v for n, v in values.items() if SETTINGS[n].part == p} for p in PARTS}
    config = Config(**{part: PARTS[part](**given) for part, given in parts.items()})
    _check(config, need_data)
    return config


def read_all(values: dict, source: str) -> dict:
    """Each of ``values`` read by its Setting; an unknown name is refused, naming it."""
    unknown = sorted(set(values) - set(SETTINGS), key=str)
    if unknown:
        where = f"{source}: " if source else ""
        raise UsageError(f"{where}unknown setting {unknown[0]!r}")
    return {name: SETTINGS[name].read(value, source) for name, value in values.items()}


def _class_num_from_data(values: dict, dataset_classes, chosen: bool) -> None:
    """class_num defaults to the classes the dataset's labels need; a class count chosen by
    flag or by the run's config.json that is smaller is refused, a larger one (a head with
    spare classes) is noted."""
    data_dir = values.get("data_dir")
    if not data_dir or values.get("synthetic"):
        return
    needed = dataset_classes(data_dir, values.get("label_offset", Input.label_offset))
    if needed is None:
        return
    class_num = values.get("class_num", Network.class_num)
    if not chosen:
        values["class_num"] = SETTINGS["class_num"].read(needed, f"{data_dir} (its classes)")
    elif class_num < needed:
        raise UsageError(f"--class_num {class_num}: the dataset in {data_dir} has {needed} classes")
    elif class_num > needed:
        print(
            f"note: --class_num {class_num}: the dataset in {data_dir} has {needed} classes; "
            f"{class_num - needed} of the network's classes have no images",
            file=sys.stderr,
        )


def _check(c: Config, need_data: bool) -> None:
    """The rules that tie settings together (each value alone was checked by its Setting)."""
    o, i, loop, net = c.optimizer, c.input, c.loop, c.network
    if list(o.lr_boundaries) != sorted(o.lr_boundaries):
        raise UsageError(f"--lr_boundaries: must be increasing, got {_shown(o.lr_boundaries)}")
    if o.lr_values is not None and len(o.lr_values) != len(o.lr_boundaries) + 1:
        raise UsageError(
            f"--lr_values: needs {len(o.lr_boundaries) + 1} values for {len(o.lr_boundaries)} "
            f"boundaries, got {len(o.lr_values)}"
        )
    for name in ("area_range", "aspect_ratio_range"):
        low, high = getattr(i, name)
        if low > high:
            raise UsageError(
                f"--{name}: must be min,max with min <= max, got {_shown((low, high))}"
            )
    if need_data and not i.synthetic and i.data_dir is None:
        raise UsageError("--data_dir: is required (or use --synthetic, or --preset demo)")
    name = loop.log_name
    if "/" in name or name in (".", ".."):
        raise UsageError("--log_name: must be a file name, not a path")
    if rundir.is_own_name(name):
        raise UsageError(
            f"--log_name: {name} is one of the run's own files in --log_dir; choose another name"
        )
    if net.trainable_from and arch.get(net.arch).frozen_before(net.trainable_from) is None:
        raise UsageError(
            f"--trainable_from: {net.trainable_from} is no layer or block of {net.arch} (e.g. "
            "block4, fc1, predictions)"
        )
    asked = [n for n in loop.allow_change if RESUME_KIND.get(n) != "ask"]
    if asked:
        raise UsageError(f"--allow_change: {asked[0]}: not one of {', '.join(RESUME['ask'])}")
    if loop.resume is not None and (loop.restore_path is not None or loop.weights is not None):
        raise UsageError(
            "--resume: resumes a run: not with --restore_path or --weights (they start one)"
        )
    spec = loop.weights
    if spec is None:
        return
    if spec != IMAGENET_WEIGHTS and not (spec.startswith(KERAS_WEIGHTS) and spec != KERAS_WEIGHTS):
        raise UsageError(
            f"--weights: expected {IMAGENET_WEIGHTS} or {KERAS_WEIGHTS}PATH, got {spec!r}"
        )
    if loop.restore_path is not None:
        raise UsageError("--weights: use either --weights or --restore_path")
    if not arch.get(net.arch).keras_weights:
        raise UsageError(
            f"--weights: keras.applications publishes ImageNet weights for vgg16 and vgg19 only, "
            f"not {net.arch}"
        )


def read_settings_file(path: str) -> dict:
    """The settings in a --config file: a JSON or YAML mapping of setting names to values
    (a run's config.json included: what the run recorded there is left out)."""
    if not isinstance(path, (str, os.PathLike)):
        raise UsageError(f"--config: expected a file's path, got {path!r}")
    path = os.fspath(path)
    name = f"--config {path}"
    text = documents.read_text(path, "settings file", name)
    if text is None:
        raise UsageError(f"{name}: no such file")
    values = documents.parse(text, name, "settings file", dict, path.endswith((".yaml", ".yml")))
    values.pop(rundir.RECORDED, None)
    return values
