"""A small Python API for notebooks: ``from vgg_keras import train, evaluate, build_vgg``.

    run = train("demo", log_dir="runs/nb")            # the demo, about a minute; returns runs/nb
    results = evaluate(run)                           # every checkpoint: [{step, top1, ...}]
    model = build_vgg("vgg16", num_classes=10, image_size=32)   # a keras.Model

``train`` and ``evaluate`` take the settings of ``run_train.py``/``run_eval.py`` as keyword
arguments (``batch_size=8``, ``eval_resize="square"``), build the same ``Config`` the command
lines build and call the same functions, and print the same log and table; an unknown or bad
setting raises ``UsageError`` naming it.
"""

from __future__ import annotations

import dataclasses

from vgg_keras.errors import RunError


def train(preset: str = "imagenet", config_file: str | None = None, **settings) -> str:
    """Train a network (``run_train.py``) and return its run folder (``log_dir``).

    ``preset`` is ``--preset``, ``config_file`` is ``--config``; ``settings`` are the flags.
    """
    from vgg_keras import cli, commands

    args = cli.TrainArgs(preset, config_file, settings)
    config = commands.train_config(args, source="train()")
    code = commands.train(config)
    if code != 0:
        raise RunError(f"training in {config.loop.log_dir} ended with exit code {code}")
    return config.loop.log_dir


def evaluate(path: str | None = None, all_ckpts: bool = True, **settings) -> list[dict]:
    """Evaluate the checkpoints of a run folder (every one, or the newest with
    ``all_ckpts=False``) or one ``model.ckpt-N`` prefix (``run_eval.py``); returns one dict per
    checkpoint: checkpoint, step, epoch, top1, top5, loss, images.  Without ``path``: the newest
    run under runs/.  ``settings`` are run_eval.py's flags (``data_dir=...``,
    ``eval_crops=10``): its own options and the evaluation settings."""
    from vgg_keras import cli, commands
    from vgg_keras import config as config_lib
    from vgg_keras.errors import UsageError

    own = {f.name for f in dataclasses.fields(cli.EvalOptions)}
    values = {"ckpt": path, "all_ckpts": all_ckpts}
    values.update({k: v for k, v in settings.items() if k in own})
    options = cli.read_options(cli.EvalOptions, values, "evaluate()")
    rest = {k: v for k, v in settings.items() if k not in own}
    unknown = sorted(set(rest) - set(config_lib.EVALUATION))
    if unknown:
        raise UsageError(f"evaluate(): unknown setting {unknown[0]!r}")
    return commands.evaluate(options, rest)


def build_vgg(
    arch: str = "vgg16",
    num_classes: int = 1000,
    image_size: int = 224,
    width_multiplier: float = 1.0,
    **network,
):
    """The keras.Model of a VGG (logits out): the network settings of ``run_train.py``
    (``dropout``, ``conv_init``, ``dense_init``, ``preprocess``, ``precision``) by keyword."""
    from vgg_keras import config as config_lib
    from vgg_keras import model

    values = dict(arch=arch, class_num=num_classes, image_size=image_size, **network)
    values["width_multiplier"] = width_multiplier
    config = config_lib.resolve(settings=values, need_data=False, source="build_vgg()")
    return model.build(config.network)
