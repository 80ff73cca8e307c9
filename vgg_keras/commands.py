"""The four programs: ``run_train.py``, ``run_eval.py``, ``run_export.py``, ``run_predict.py``
and the console scripts ``vgg-train``, ``vgg-eval``, ``vgg-export``, ``vgg-predict`` that
``pip install .`` puts on the PATH both call these.

Each ``*_main(argv)`` parses its flags before importing TensorFlow, so ``--help`` and a bad flag
answer at once, and returns the exit code; ``*_console()`` is the console-script entry point
(errors become one line, see ``errors.run_cli``).
"""

from __future__ import annotations

import subprocess
import sys

from vgg_keras.errors import run_cli


def train_main(argv: list[str] | None = None) -> int:
    from vgg_keras import config as config_lib

    config = config_lib.from_args(argv)
    from vgg_keras import evaluation, training

    ensure_demo_data(config.data_dir)
    if config.mode == "evaluate":
        return evaluation.evaluate_folder(config)
    return training.train(config)


def ensure_demo_data(data_dir: str | None) -> None:
    """Build the embedded demo dataset on first use of its folder."""
    from vgg_keras import config as config_lib
    from vgg_keras.data import demo

    if data_dir == config_lib.DEMO_DATA_DIR and not demo.built_info(data_dir):
        # In a child process: TensorFlow's runtime here must stay unconfigured until the
        # distribution strategy has laid out the devices.
        subprocess.run([sys.executable, "-m", "vgg_keras.data.demo", data_dir], check=True)


def eval_main(argv: list[str] | None = None) -> int:
    from vgg_keras import cli

    args = cli.eval_parser().parse_args(argv)
    from vgg_keras import evaluation

    return evaluation.run(args)


def export_main(argv: list[str] | None = None) -> int:
    from vgg_keras import cli

    args = cli.export_args(argv)
    from vgg_keras import export

    return export.run(args)


def predict_main(argv: list[str] | None = None) -> int:
    from vgg_keras import cli

    args = cli.predict_args(argv)
    from vgg_keras import predict

    return predict.run(args)


def train_console() -> int:
    return run_cli(train_main)


def eval_console() -> int:
    return run_cli(eval_main)


def export_console() -> int:
    return run_cli(export_main)


def predict_console() -> int:
    return run_cli(predict_main)
