"""The command-line flags of run_export.py and run_predict.py.

Kept free of TensorFlow (like config.py), so ``--help`` and a bad flag answer at once instead of
after TensorFlow's few seconds of start-up; the scripts import the package only after parsing.
"""

from __future__ import annotations

import argparse

from vgg_keras.config import UsageParser, add_config_flags
from vgg_keras.errors import UsageError

EXPORT_FORMATS = ("savedmodel", "keras", "frozen_graph", "checkpoint")
# The settings a user may override on the command line: those that shape the network or its input.
MODEL_FLAGS = ("arch", "class_num", "image_size", "width_multiplier", "preprocess")


def add_source_flags(parser: argparse.ArgumentParser, model_dir: bool = False) -> None:
    """--ckpt / --weights (and --model, a SavedModel folder) plus the model overrides."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--ckpt", help="checkpoint prefix, or a folder (its latest checkpoint)")
    group.add_argument(
        "--weights", help="keras_imagenet:PATH, a keras.applications VGG16/VGG19 weight file"
    )
    if model_dir:
        group.add_argument("--model", help="a SavedModel folder written by run_export.py")
    add_config_flags(parser, MODEL_FLAGS)


def export_args(argv: list[str] | None = None) -> argparse.Namespace:
    """run_export.py's flags; ``formats`` is the list parsed from --format."""
    p = UsageParser(
        prog="run_export.py",
        description="Export a checkpoint (or a Keras weight file) as a SavedModel, Keras model "
        "files, a frozen GraphDef or a checkpoint.",
    )
    add_source_flags(p)
    p.add_argument(
        "--format",
        default="savedmodel",
        help=f"comma-separated, some of: {', '.join(EXPORT_FORMATS)} (default: savedmodel)",
    )
    p.add_argument("--output", required=True, help="folder to create (new or empty)")
    p.add_argument("--labels", help="labels.txt to ship with the export (default: the dataset's)")
    args = p.parse_args(argv)
    args.formats = [f.strip() for f in args.format.split(",") if f.strip()]  # checked by export()
    return args


def predict_args(argv: list[str] | None = None) -> argparse.Namespace:
    """run_predict.py's flags."""
    p = UsageParser(
        prog="run_predict.py",
        description="Top-k classes of image files, folders or globs with a trained VGG.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image file, folder or glob")
    add_source_flags(p, model_dir=True)
    p.add_argument("--labels", help="labels.txt: class names (synset<TAB>text or one per line)")
    p.add_argument("--top", type=int, default=5, help="classes shown per image")
    p.add_argument("--batch_size", type=int, default=32, help="images per session call")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    args = p.parse_args(argv)
    for flag in ("top", "batch_size"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag}: must be >= 1, got {getattr(args, flag)}")
    return args
