"""The command-line flags of run_eval.py, run_export.py and run_predict.py (run_train.py's are
config.py's).

Kept free of TensorFlow (like config.py), so ``--help`` and a bad flag answer at once instead of
after TensorFlow's few seconds of start-up; the scripts import the package only after parsing.
"""

from __future__ import annotations

import argparse

from vgg_keras.config import NETWORK_KEYS, UsageParser, add_config_flags, names
from vgg_keras.errors import UsageError

EXPORT_FORMATS = ("savedmodel", "keras", "frozen_graph", "checkpoint")
# run_eval.py's Config flags: the network and its input, which default to config.json's values,
# and how to run this process.  Training-only settings stay out of --help.
EVAL_FLAGS = names("network", "evaluation", "runtime")
CROPS = (1, 10)  # a central crop, or preprocess.ten_crop_images' ten


def eval_parser() -> argparse.ArgumentParser:
    """run_eval.py's flags."""
    parser = UsageParser(
        prog="run_eval.py",
        description="Evaluate VGG checkpoints (top-1, top-5, loss) on the validation split. "
        "Model and data settings come from config.json beside the checkpoints; flags override.",
    )
    parser.add_argument(
        "--ckpt",
        help="a model.ckpt-N prefix, or a folder: its latest checkpoint (every one with "
        "--all-ckpts); without --ckpt and --eval_dir: the newest run under runs/",
    )
    parser.add_argument(
        "--all-ckpts",
        "--all_ckpts",
        dest="all_ckpts",
        action="store_true",
        help="evaluate every model.ckpt-N in the folder (default: the newest run under runs/), "
        "in step order",
    )
    parser.add_argument(
        "--eval_dir", help="checkpoint folder: every checkpoint in it (= --all-ckpts --ckpt DIR)"
    )
    parser.add_argument(
        "--output",
        help="folder for eval_results.json/.csv, eval_curve.png, eval.log and TensorBoard "
        "events under eval/ (default: the checkpoint folder)",
    )
    parser.add_argument(
        "--eval_crops",
        type=int,
        choices=CROPS,
        default=1,
        help="1: central crop; 10: four corners, centre and their mirrors, logits averaged "
        "(a batch then holds 10x the images)",
    )
    parser.add_argument(
        "--watch",
        action="store_true",
        help="keep evaluating checkpoints as a running training writes them",
    )
    parser.add_argument(
        "--watch_timeout",
        type=float,
        default=3600.0,
        help="with --watch: stop after this many seconds without a new checkpoint "
        "(default: %(default)g)",
    )
    add_config_flags(parser, EVAL_FLAGS)
    return parser


def add_source_flags(parser: argparse.ArgumentParser, model_dir: bool = False) -> None:
    """--ckpt / --weights (and --model, a SavedModel folder) plus the model overrides."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--ckpt", help="checkpoint prefix, or a folder (its latest checkpoint)")
    group.add_argument(
        "--weights", help="keras_imagenet:PATH, a keras.applications VGG16/VGG19 weight file"
    )
    if model_dir:
        group.add_argument("--model", help="a SavedModel folder written by run_export.py")
    add_config_flags(parser, NETWORK_KEYS)


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
