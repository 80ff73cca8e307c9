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
from conftest import (
    PHOTO_CLASSES,
    REPO_ROOT,
    logged_losses,
    run_in_process,
    run_script,
    write_photo_folder,
)

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
# commands (a full VGG at 224 px) run scaled down in test_e2e_imagenet.py; the Ascend ones are
# left out.
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
        outputs[doc] = logged_losses(proc.stdout)
    for doc, losses in outputs.items():  # well below chance, ln(10), where every net starts
        assert len(losses) >= 4 and sum(losses[-2:]) / 2 < 0.75 * math.log(10), (doc, losses)
