"""The README's own-images commands, copied verbatim from the README and run in a fresh folder
(the converter in a fresh Python, the run_*.py programs through their main(argv) in this process):
a folder of JPEGs in three classes becomes TFRecords, the published VGG16 (a stand-in file in
Keras' cache: nothing is downloaded) is fine-tuned with its base frozen, its best checkpoint is
evaluated per class, exported, and the export classifies a new JPEG."""

from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
import sys

import pytest
from conftest import PHOTO_CLASSES, REPO_ROOT, run_in_process, run_script, write_photo_folder

from vgg_keras.compat import keras

README = os.path.join(REPO_ROOT, "README.md")


def readme_block(section: str) -> list[str]:
    """The commands of the first ```bash block under ``## <section>``, comments dropped."""
    with open(README) as f:
        text = f.read()
    part = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", part, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_the_readme_own_images_block_is_what_this_test_runs():
    commands = readme_block("Your own images")
    assert commands[0] == "make install && source .venv/bin/activate"
    programs = [shlex.split(c)[1] for c in commands[1:]]
    assert programs == ["-m", "run_train.py", "run_eval.py", "run_export.py", "run_predict.py"]


@pytest.mark.slow
def test_the_readme_own_images_commands_run_as_written(tmp_path, monkeypatch):
    # 8 photos a class: 6 held out, 18 to train, one step of 16 an epoch (the preset's batch).
    write_photo_folder(str(tmp_path / "photos"), per_class=8)
    new_photo = tmp_path / "photos" / PHOTO_CLASSES[1] / f"{PHOTO_CLASSES[1]}_03.jpg"
    (tmp_path / "new_photo.jpg").write_bytes(new_photo.read_bytes())
    cache = tmp_path / "keras" / "models"
    cache.mkdir(parents=True)
    # A stand-in for keras.applications' file: the same layers, random weights.
    stand_in = keras.applications.VGG16(weights=None, include_top=False)
    stand_in.save_weights(str(cache / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    env = {**os.environ, "PYTHONPATH": REPO_ROOT}
    outputs = []
    for command in readme_block("Your own images")[1:]:  # the first line is the venv's
        argv = shlex.split(command)
        if argv[1] == "-m":  # the converter, in a fresh Python as "python" in the venv runs it
            proc = subprocess.run(
                [sys.executable, *argv[1:]], cwd=tmp_path, env=env, capture_output=True,
                text=True, timeout=900,
            )  # fmt: skip
        else:  # run_*.py: its main(argv), in this process (one TensorFlow start for all four)
            proc = run_in_process(argv[1], *argv[2:], cwd=str(tmp_path))
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        outputs.append(proc.stdout)
    assert "from Keras' cache" in outputs[1] and "initialised 13 layers" in outputs[1]
    run = tmp_path / "runs" / "photos"
    assert (run / "best_checkpoint.json").exists()
    names = os.listdir(run)
    assert [n for n in names if n.endswith(".per_class.csv")]
    assert [n for n in names if n.endswith(".confusion.png")]
    assert (tmp_path / "exports" / "photos" / "saved_model.pb").exists()
    line = outputs[-1].strip().splitlines()[-1]
    assert line.startswith("new_photo.jpg: ") and any(c in line for c in PHOTO_CLASSES)


# The training commands of README.md and docs/ that run on the demo data, as written there
# ($T: docs/distributed.md's own definition), each for a few steps: every one must learn.
# `make train` and the API's train("demo") are the demo run (test_e2e_demo.py); the own-images
# commands run above; docs/distributed.md's $F table is `--preset demo` again.  The ImageNet
# commands (a full VGG at 224 px) run scaled down further below; the Ascend ones are left out.
T = "--preset demo --width_multiplier 0.0625 --mode train --data_dir data/demo --progress false"
DOCUMENTED = {
    "docs/recipe.md": "python run_train.py --preset demo --arch vgg16_bn --conv_init fan_out "
    "--clip_grad_norm 0",
    "docs/using.md": "python run_train.py --preset demo --log_dir runs/demo_ft "
    "--restore_path runs/demo --restore_exclude predictions "
    "--max_epochs 1 --T_max 1 --warmup_epochs 0 --lr 0.01",
    "docs/distributed.md": "python -m vgg_keras.launch --workers 2 -- run_train.py $T "
    "--max_train_steps 3000 --log_dir runs/mw",
}


def _losses(output: str) -> list[float]:
    return [float(x) for x in re.findall(r"  step:\s+\d+ .*?  loss:\s*([\d.]+)", output)]


def test_the_documented_training_commands_are_the_ones_this_file_runs():
    for doc, command in DOCUMENTED.items():
        with open(os.path.join(REPO_ROOT, doc)) as f:
            text = " ".join(f.read().replace("\\\n", " ").split())
        assert command in text, (doc, command)
    with open(os.path.join(REPO_ROOT, "docs", "distributed.md")) as f:
        assert f'`T="{T}"`' in " ".join(f.read().split())


def test_the_documented_training_commands_learn(demo_dir, demo_run, tmp_path):
    cheap = ["--display_every", "10", "--progress", "false", "--mode", "train"]
    runs = tmp_path / "runs"
    runs.mkdir()
    os.symlink(demo_run, runs / "demo")  # the run docs/using.md fine-tunes from
    outputs = {}
    for doc, command in DOCUMENTED.items():
        argv = shlex.split(command.replace("$T", T).replace("runs/", f"{runs}/"))[1:]
        argv = [demo_dir if a == "data/demo" else a for a in argv]
        argv += [*cheap, "--data_dir", demo_dir]
        if "--max_epochs" not in argv:
            argv += ["--max_train_steps", "100"]
        if "--log_dir" not in argv:  # the preset's runs/demo is not this test's
            argv += ["--log_dir", str(runs / doc.replace("/", "_"))]
        if argv[0] == "-m":  # the launcher: real processes
            argv[argv.index("run_train.py")] = os.path.join(REPO_ROOT, "run_train.py")
            env = {**os.environ, "PYTHONPATH": REPO_ROOT}
            proc = subprocess.run(
                [sys.executable, *argv], capture_output=True, text=True, timeout=600, env=env
            )
        else:
            proc = run_script(argv[0], *argv[1:], timeout=600)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        outputs[doc] = _losses(proc.stdout)
    for doc, losses in outputs.items():  # well below chance, ln(10), where every net starts
        assert len(losses) >= 4 and sum(losses[-2:]) / 2 < 0.75 * math.log(10), (doc, losses)


# The ImageNet commands that one process on this machine can run: the reference's recipe (a
# plain VGG, dropout 0.5, lr 0.01, batch 256), scaled down to the demo data.  Scaled down means
# 1/16 of the width at 32 px, with the fc layers' initialisation scaled with them: the recipe's
# N(0, 0.01) was set for fc1's 25,088 inputs (He's std there is 0.0089); at 1/16 width and
# 32 px fc1 has 32, and the same std would leave the logits 10^4 times weaker (docs/recipe.md).
# The GPU, multi-host and NPU lines are left out; docs/distributed.md's one-device line is the
# README's first.  Each starts at chance, as the real recipe does, and must be clearly off it.
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
    cheap = ["--display_every", "10", "--progress", "false", "--mode", "train"]
    for i, command in enumerate(c for commands in IMAGENET.values() for c in commands):
        argv = _run_train_argv(command)  # each its own run (two write runs/vgg16)
        argv[argv.index("--data_dir") + 1] = demo_dir
        argv[argv.index("--log_dir") + 1] = str(tmp_path / str(i))
        argv += [*SCALED_DOWN, *cheap, "--max_train_steps", "200"]
        proc = run_script("run_train.py", *argv, timeout=600)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        losses = _losses(proc.stdout)
        first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
        assert len(losses) == 20 and last < min(first, math.log(10)) - 0.04, (command, losses)
