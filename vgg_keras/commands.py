"""The four programs, in one table: ``run_train.py``, ``run_eval.py``, ``run_export.py``,
``run_predict.py`` and the console scripts ``vgg-train``, ``vgg-eval``, ``vgg-export``,
``vgg-predict`` that ``pip install .`` puts on the PATH all call ``main``.

Each program parses its flags before importing TensorFlow (``cli.py`` is TensorFlow-free), so
``--help`` and a bad flag answer at once; then it calls the same function the Python API calls
(``train``, ``evaluate``): one way in, whichever door.  Errors become one line and an exit
code in ``errors.run_cli``, the one place that also handles Ctrl-C.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

from vgg_keras import cli
from vgg_keras import config as config_lib
from vgg_keras.errors import EXIT_SIGINT, Interrupted, UsageError, run_cli


def train(config: config_lib.Config) -> int:
    """Train (or, with --mode evaluate, evaluate every checkpoint of --eval_dir); the exit code."""
    from vgg_keras import training

    if config.loop.mode == "evaluate":
        raise UsageError("--mode evaluate: call evaluate() (run_eval.py) to evaluate a run")
    ensure_demo_data(config.input.data_dir)
    return training.train(config)


def evaluate(options: cli.EvalOptions, settings: dict) -> list[dict]:
    """Evaluate the checkpoints ``options`` name, with the run's settings overridden by
    ``settings``; the results, one dict per checkpoint."""
    from vgg_keras import evaluation

    ensure_demo_data(settings.get("data_dir"))
    return evaluation.run(options, settings)


def ensure_demo_data(data_dir: str | None) -> None:
    """Build the embedded demo dataset on first use of its folder."""
    from vgg_keras.tools import demo

    if data_dir == config_lib.DEMO_DATA_DIR and not demo.built_info(data_dir):
        # In a child process: TensorFlow's runtime here must stay unconfigured until the
        # distribution strategy has laid out the devices.
        build = [sys.executable, "-m", "vgg_keras.tools.demo", data_dir]
        done = subprocess.run(build, stderr=subprocess.PIPE, text=True)
        lines = done.stderr.strip().splitlines()
        last = lines[-1] if lines else "the demo data was not built"
        if done.returncode == EXIT_SIGINT:  # Ctrl-C reaches the whole process group
            raise Interrupted(last)
        if done.returncode != 0:  # its one line, as this program's own (not a traceback here)
            raise UsageError(last.replace("error: ", "", 1))
        print(done.stderr, end="", file=sys.stderr)


def train_config(args: cli.TrainArgs, source: str = "") -> config_lib.Config:
    """The Config of a training command line (or of the API's keywords: ``source``)."""
    from vgg_keras.data import pipeline

    return config_lib.resolve(
        args.preset,
        args.settings,
        settings_file=args.settings_file,
        dataset_classes=pipeline.needed_classes,
        source=source,
    )


def _train_main(argv: list[str] | None) -> int:
    args = cli.train_args(argv)
    if args.settings.get("mode") == "evaluate":
        return _evaluate_mode(args)
    return train(train_config(args))


def _evaluate_mode(args: cli.TrainArgs) -> int:
    """``run_train.py --mode evaluate``: ``run_eval.py --eval_dir`` (default --log_dir), with
    the run's config.json and the flags given over it."""
    from vgg_keras import evaluation

    given = {k: v for k, v in args.settings.items() if v is not None}
    if config_lib.SETTINGS["synthetic"].read(given.get("synthetic", "false")):
        raise UsageError("--synthetic: --mode evaluate needs the validation data (--data_dir)")
    preset_log_dir = config_lib.PRESETS[args.preset].get("log_dir", config_lib.Loop.log_dir)
    folder = given.get("eval_dir") or given.get("log_dir") or preset_log_dir
    evaluating = {k: v for k, v in given.items() if k in config_lib.EVALUATION}
    options = cli.EvalOptions(eval_dir=folder)
    return evaluation.exit_code(evaluate(options, evaluating))


def _eval_main(argv: list[str] | None) -> int:
    from vgg_keras import evaluation

    args = cli.eval_args(argv)
    return evaluation.exit_code(evaluate(args.options, args.settings))


def _export_main(argv: list[str] | None) -> int:
    args = cli.export_args(argv)
    from vgg_keras import export

    return export.run(args)


def _predict_main(argv: list[str] | None) -> int:
    args = cli.predict_args(argv)
    from vgg_keras import predict

    return predict.run(args)


PROGRAMS: dict[str, Callable[[list[str] | None], int]] = {
    "train": _train_main,
    "eval": _eval_main,
    "export": _export_main,
    "predict": _predict_main,
}


def main(program: str, argv: list[str] | None = None) -> int:
    """Run ``program`` (a key of PROGRAMS) with ``argv``; returns the exit code."""
    return run_cli(PROGRAMS[program], argv)


def exit_now(code: int) -> None:
    """End the process with ``code`` once its output is flushed, without the interpreter's
    teardown: freeing TensorFlow's objects there took 0.7-4 s after a demo run's "done", and
    1.0-1.75 s of a 5-7 s run_eval.py (docs/performance.md).  Every program has closed its files
    by the time ``main`` returns."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _console(program: str):
    """The console script of ``program`` (pyproject.toml), as its run_*.py runs it."""
    return lambda: exit_now(main(program))


train_console, eval_console, export_console, predict_console = map(
    _console, ("train", "eval", "export", "predict")
)
