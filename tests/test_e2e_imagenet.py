"""The ImageNet commands of README.md and docs/distributed.md, as written there, scaled down to
the demo data and run through run_train.py's main(argv) in this process: each must run and learn."""

from __future__ import annotations

import json
import math
import os
import shlex

from conftest import REPO_ROOT, logged_losses, run_script

# The ImageNet commands that one process on this machine can run: the reference's recipe (a
# plain VGG, dropout 0.5, lr 0.01, batch 256), scaled down to the demo data.  Scaled down means
# 1/16 of the width at 32 px, with the fc layers' initialisation scaled with them: the recipe's
# N(0, 0.01) was set for fc1's 25,088 inputs (He's std there is 0.0089); at 1/16 width and
# 32 px fc1 has 32, and the same std would leave the logits 10^4 times weaker (docs/recipe.md).
# The GPU, multi-host and NPU lines are left out; docs/distributed.md's one-device line is the
# README's first.  Each starts at chance, as the real recipe does, and must be clearly off it
# (the accumulated line by being the first line's batch: see the test).
IMAGENET = {
    "README.md": [
        "make train DATA=/data/imagenet",
        'make train DATA=/data/imagenet ARGS="--batch_size 64 --accumulation_steps 4"',
        "python run_train.py --data_dir /data/imagenet --arch vgg19 --log_dir runs/vgg19",
    ],
    "docs/distributed.md": [
        "python run_train.py --data_dir /data/imagenet --batch_size 32 --log_dir runs/vgg16_8gpu",
    ],
}
SCALED_DOWN = ["--width_multiplier", "0.0625", "--image_size", "32", "--dense_init", "he"]


def _run_train_argv(command: str) -> list[str]:
    """The run_train.py flags that ``command`` gives (``make train`` as the Makefile runs it)."""
    argv = shlex.split(command)
    if argv[:2] != ["make", "train"]:
        return argv[2:]
    make = dict(a.split("=", 1) for a in argv[2:])
    args = shlex.split(make.get("ARGS", ""))
    return ["--data_dir", make["DATA"], "--log_dir", "runs/vgg16", *args]


def test_the_imagenet_commands_are_the_ones_this_file_runs():
    for doc, commands in IMAGENET.items():
        with open(os.path.join(REPO_ROOT, doc)) as f:
            lines = [line.split("  #")[0].strip() for line in f.read().splitlines()]
        assert set(commands) <= set(lines), doc
    with open(os.path.join(REPO_ROOT, "Makefile")) as f:  # what _run_train_argv assumes
        assert "run_train.py --data_dir $(DATA) --log_dir $(LOG_DIR) $(ARGS)" in f.read()


def test_the_imagenet_commands_learn_scaled_down(demo_dir, tmp_path):
    """Each command runs as written and learns in 200 steps.  The accumulated one runs 20: its
    4 x 64 take the images and the update of one batch of 256 (test_training's accumulation
    test), so it learns as the first line does; here it must run and record that batch."""
    cheap = ["--display_every", "10", "--progress", "false", "--mode", "train"]
    for i, command in enumerate(c for commands in IMAGENET.values() for c in commands):
        argv = _run_train_argv(command)  # each its own run (two write runs/vgg16)
        argv[argv.index("--data_dir") + 1] = demo_dir
        argv[argv.index("--log_dir") + 1] = str(tmp_path / str(i))
        steps = 20 if "--accumulation_steps" in argv else 200
        argv += [*SCALED_DOWN, *cheap, "--max_train_steps", str(steps)]
        proc = run_script("run_train.py", *argv, timeout=600)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        losses = logged_losses(proc.stdout)
        assert len(losses) == steps // 10 and all(map(math.isfinite, losses)), (command, losses)
        if steps < 200:
            with open(tmp_path / str(i) / "config.json") as f:
                config = json.load(f)
            assert config["run"]["global_batch"] == 256 and config["accumulation_steps"] == 4
            continue
        first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
        assert last < min(first, math.log(10)) - 0.04, (command, losses)
