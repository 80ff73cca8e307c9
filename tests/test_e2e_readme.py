"""The README's own-images commands, copied verbatim from the README and run in a fresh folder:
a folder of JPEGs in three classes becomes TFRecords, the published VGG16 (a stand-in file in
Keras' cache: nothing is downloaded) is fine-tuned with its base frozen, its best checkpoint is
evaluated per class, exported, and the export classifies a new JPEG."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest
from conftest import PHOTO_CLASSES, REPO_ROOT, write_photo_folder

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
def test_the_readme_own_images_commands_run_as_written(tmp_path):
    write_photo_folder(str(tmp_path / "photos"), per_class=15)
    new_photo = tmp_path / "photos" / PHOTO_CLASSES[1] / f"{PHOTO_CLASSES[1]}_03.jpg"
    (tmp_path / "new_photo.jpg").write_bytes(new_photo.read_bytes())
    for script in ("run_train.py", "run_eval.py", "run_export.py", "run_predict.py"):
        os.symlink(os.path.join(REPO_ROOT, script), tmp_path / script)
    cache = tmp_path / "keras" / "models"
    cache.mkdir(parents=True)
    # A stand-in for keras.applications' file: the same layers, random weights.
    stand_in = keras.applications.VGG16(weights=None, include_top=False)
    stand_in.save_weights(str(cache / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"))
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "KERAS_HOME": str(tmp_path / "keras")}
    outputs = []
    for command in readme_block("Your own images")[1:]:  # the first line is the venv's
        argv = shlex.split(command)
        argv[0] = sys.executable  # "python" in the activated venv
        proc = subprocess.run(
            argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
        )
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
