"""A small Python API for notebooks: ``from vgg_keras import train, evaluate, build_vgg``.

    run = train("demo", log_dir="runs/nb")            # the demo, about a minute; returns runs/nb
    results = evaluate(run)                           # every checkpoint: [{step, top1, ...}]
    model = build_vgg("vgg16", num_classes=10, image_size=32)   # a keras.Model

``train`` and ``evaluate`` take the settings of ``run_train.py``/``run_eval.py`` as keyword
arguments (``batch_size=8``, ``eval_resize="square"``), resolve them exactly as the command
lines do, and print the same log and table; bad settings raise ``UsageError``.
"""

from __future__ import annotations

from vgg_keras.errors import RunError


def train(preset: str = "imagenet", config_file: str | None = None, **settings) -> str:
    """Train a network (``run_train.py``) and return its run folder (``log_dir``).

    ``preset`` is ``--preset``, ``config_file`` is ``--config``; ``settings`` are the flags.
    """
    from vgg_keras import commands
    from vgg_keras import config as config_lib

    read = config_lib.read_settings_file(config_file) if config_file else None
    config = config_lib.merge(preset, flags=settings, settings_file=read)
    from vgg_keras import evaluation, training

    commands.ensure_demo_data(config.data_dir)
    if config.mode == "evaluate":
        code = evaluation.evaluate_folder(config)
    else:
        code = training.train(config)
    if code != 0:
        raise RunError(f"training in {config.log_dir} ended with exit code {code}")
    return config.log_dir


def evaluate(path: str | None = None, all_ckpts: bool = True, **flags) -> list[dict]:
    """Evaluate the checkpoints of a run folder (every one, or the newest with
    ``all_ckpts=False``) or one ``model.ckpt-N`` prefix (``run_eval.py``); returns one dict per
    checkpoint: checkpoint, step, epoch, top1, top5, loss, images.  Without ``path``: the newest
    run under runs/.  ``flags`` are run_eval.py's (``data_dir=...``, ``eval_crops=10``)."""
    from vgg_keras import cli

    argv = ["--all-ckpts"] if all_ckpts else []
    if path is not None:
        argv += ["--ckpt", str(path)]
    for name, value in flags.items():
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        argv += [f"--{name}", str(value).lower() if isinstance(value, bool) else str(value)]
    args = cli.eval_parser().parse_args(argv)
    from vgg_keras import evaluation

    return evaluation.evaluate_args(args)


def build_vgg(*args, **kwargs):
    """``vgg_keras.model.build_vgg``: the VGG16/VGG19 keras.Model, logits out."""
    from vgg_keras import model

    return model.build_vgg(*args, **kwargs)
