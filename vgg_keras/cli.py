"""The command lines of the four programs: one flag per setting (config.py), plus each program's
own options, declared the same way (type, bounds, help) and read by the same ``Setting.read``.

Kept free of TensorFlow (like config.py), so ``--help`` and a bad flag answer at once instead of
after TensorFlow's few seconds of start-up.  Every flag is read as text here and converted and
checked by its Setting, whichever program takes it.  ``prog`` is left to argparse, so the help
of ``vgg-train`` names ``vgg-train`` and that of ``run_train.py`` names ``run_train.py``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional, Tuple

from vgg_keras import config
from vgg_keras.config import PRESETS, SETTINGS, Setting, setting
from vgg_keras.errors import UsageError

EXPORT_FORMATS = ("savedmodel", "keras", "frozen_graph", "checkpoint")
SOURCES = ("ckpt", "weights", "model")  # where export and predict take the network from
CROPS = (1, 10)  # a central crop, or preprocess.ten_crop_images' ten


class UsageParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors become a UsageError (one line, exit code 2)."""

    def error(self, message: str):
        raise UsageError(message)


# ---------------------------------------------------------------------------------------------
# The programs' own options


@dataclass(frozen=True)
class EvalOptions:
    ckpt: Optional[str] = setting(
        None,
        "a model.ckpt-N prefix, or a folder: its newest checkpoint (every one with --all-ckpts, "
        "the best with --best); without --ckpt and --eval_dir: the newest run under runs/",
    )
    all_ckpts: bool = setting(
        False, "every model.ckpt-N of the folder, in step order", aliases=("--all-ckpts",)
    )
    best: bool = setting(False, "the folder's best checkpoint (best_checkpoint.json)")
    eval_dir: Optional[str] = setting(
        None, "checkpoint folder: every checkpoint in it (= --all-ckpts --ckpt DIR)"
    )
    output: Optional[str] = setting(
        None,
        "folder for eval_results*.json/.csv, eval_curve*.png, eval.log and TensorBoard events "
        "under eval/ (default: the checkpoint folder)",
    )
    eval_crops: int = setting(
        1,
        "1: central crop; 10: four corners, centre and their mirrors, logits averaged",
        choices=CROPS,
    )
    per_class: bool = setting(
        False,
        "also per-class accuracy and the confusion matrix of each checkpoint (JSON, CSV, PNG)",
    )
    watch: bool = setting(False, "keep evaluating checkpoints as a running training writes them")
    watch_timeout: float = setting(
        3600.0,
        "with --watch: stop after this many seconds without a new checkpoint",
        at_least=0,
        at_most=1e9,
    )


@dataclass(frozen=True)
class ExportOptions:
    best: bool = setting(False, "with --ckpt DIR: its best checkpoint (best_checkpoint.json)")
    format: Tuple[str, ...] = setting(
        ("savedmodel",),
        "comma-separated, some of: " + ", ".join(EXPORT_FORMATS),
        choices=EXPORT_FORMATS,
    )
    output: Optional[str] = setting(None, "folder to create (new or empty; parents are made)")
    labels: Optional[str] = setting(
        None, "labels.txt to ship with the export (default: the dataset's)"
    )


@dataclass(frozen=True)
class PredictOptions:
    labels: Optional[str] = setting(
        None, "labels.txt: class names (synset<TAB>text or one per line)"
    )
    top: int = setting(5, "classes shown per image", at_least=1, at_most=100_000)
    batch_size: int = setting(32, "images per session call", at_least=1, at_most=65536)
    json: bool = setting(False, "print one JSON document")


def read_options(cls, values: dict, source: str = ""):
    """An options dataclass from given ``values`` (None: not given), each read by its Setting."""
    known = {s.name: s for s in config.declared_settings(cls, cls.__name__)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UsageError(f"{source + ': ' if source else ''}unknown option {unknown[0]!r}")
    given = {k: known[k].read(v, source) for k, v in values.items() if v is not None}
    return cls(**given)


# ---------------------------------------------------------------------------------------------
# Parsers


def add_flags(parser: argparse.ArgumentParser, settings) -> None:
    """One flag per Setting; values stay text (None: not given) for ``Setting.read``."""
    for s in settings:
        kwargs = {"default": None, "dest": s.name, "help": s.metadata["help"]}
        if s.kind is bool and not s.is_list:
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        elif s.metadata["choices"]:
            kwargs["metavar"] = "{" + ",".join(map(str, s.metadata["choices"])) + "}"
        parser.add_argument(s.flag, *s.metadata["aliases"], **kwargs)


@dataclass(frozen=True)
class TrainArgs:
    """What run_train.py's command line says: a preset, a --config file, the flags given."""

    preset: str
    settings_file: str | None
    settings: dict


def train_args(argv: list[str] | None = None) -> TrainArgs:
    parser = UsageParser(description="Train VGG networks on TF-slim ImageNet TFRecords.")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="imagenet", help="starting defaults"
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="settings from a JSON (or, with PyYAML installed, YAML) file with config.json's "
        "keys, e.g. another run's config.json; flags override it",
    )
    add_flags(parser, SETTINGS.values())
    values = vars(parser.parse_args(argv))
    return TrainArgs(values.pop("preset"), values.pop("config"), values)


@dataclass(frozen=True)
class ProgramArgs:
    """A program's own options and the settings given on its command line."""

    options: object
    settings: dict
    extra: dict  # the plain argparse arguments: the images, where the network comes from


def eval_args(argv: list[str] | None = None) -> ProgramArgs:
    """run_eval.py: its options, and the network and input settings, which default to the
    run's config.json."""
    parser = UsageParser(
        description="Evaluate VGG checkpoints (top-1, top-5, loss) on the validation split. "
        "Model and data settings come from config.json beside the checkpoints; flags override."
    )
    return _parse(parser, EvalOptions, [SETTINGS[n] for n in config.EVALUATION], argv)


def _parse(parser, options_cls, settings, argv, extra: tuple[str, ...] = ()) -> ProgramArgs:
    """Parse ``argv``: the options of ``options_cls``, ``settings`` as text, and the plain
    argparse arguments named in ``extra`` (positional images, the model's source)."""
    own = config.declared_settings(options_cls, options_cls.__name__)
    add_flags(parser, [*own, *settings])
    values = vars(parser.parse_args(argv))
    plain = {name: values.pop(name) for name in extra}
    options = read_options(options_cls, {s.name: values.pop(s.name) for s in own})
    return ProgramArgs(options, values, plain)


def _source_flags(parser: argparse.ArgumentParser, model_dir: bool = False) -> None:
    """--ckpt / --weights (and --model, a SavedModel folder): where the network comes from."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--ckpt", help="checkpoint prefix, or a folder (its newest checkpoint)")
    group.add_argument(
        "--weights",
        help="imagenet (keras.applications' VGG16/VGG19 file) or keras_imagenet:PATH",
    )
    if model_dir:
        group.add_argument("--model", help="a SavedModel folder written by run_export.py")


def _network_flags() -> list[Setting]:
    return [SETTINGS[n] for n in config.IDENTITY + ("intra_op_threads", "inter_op_threads")]


def export_args(argv: list[str] | None = None) -> ProgramArgs:
    parser = UsageParser(
        description="Export a checkpoint (or a Keras weight file) as a SavedModel, Keras model "
        "files, a frozen GraphDef or a checkpoint."
    )
    _source_flags(parser)
    args = _parse(parser, ExportOptions, _network_flags(), argv, ("ckpt", "weights"))
    if args.options.output is None:
        raise UsageError("--output: required (the folder to create)")
    return args


def predict_args(argv: list[str] | None = None) -> ProgramArgs:
    parser = UsageParser(description="Top-k classes of image files, folders or globs.")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image file, folder or glob")
    _source_flags(parser, model_dir=True)
    return _parse(parser, PredictOptions, _network_flags(), argv, SOURCES + ("images",))
