"""run_predict.py: the demo's validation images as .jpg files give run_eval.py's accuracy."""

from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
import pytest

from vgg_keras import commands, evaluation, export, predict, rundir
from vgg_keras import config as config_lib
from vgg_keras.compat import tf
from vgg_keras.data import pipeline, schema
from vgg_keras.errors import UsageError


@pytest.fixture(scope="module")
def image_folder(demo_dir, tmp_path_factory) -> str:
    """Every demo validation record's JPEG bytes, verbatim, as <label>/<record index>.jpg."""
    out = tmp_path_factory.mktemp("images")
    inp = config_lib.resolve(settings={"data_dir": demo_dir}, need_data=False).input
    split = pipeline.load_split(inp, "validation")
    for index, record in enumerate(tf.data.TFRecordDataset(list(split.files))):
        jpeg, label, _ = schema.parse(record)
        folder = out / str(int(label))
        folder.mkdir(exist_ok=True)
        (folder / f"{index:04d}.jpg").write_bytes(jpeg.numpy())
    return str(out)


def _label(path: str) -> int:
    return int(os.path.basename(os.path.dirname(path)))


def test_predict_matches_eval_accuracy(script_runner, demo_checkpoint, image_folder):
    proc = script_runner(
        "run_predict.py", image_folder, "--ckpt", demo_checkpoint, "--json", "--batch_size", "50",
        "--top", "6",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert len(found) == 360 and all(len(r["top"]) == 6 for r in found)
    top1 = sum(r["top"][0]["class"] == _label(r["file"]) for r in found)
    top5 = sum(_label(r["file"]) in [t["class"] for t in r["top"][:5]] for r in found)

    # JPEG files here, TFRecords there: the logits agree to float precision, so the counts may
    # differ only by images whose k-th and (k+1)-th classes nearly tie.
    def near_ties(k: int) -> int:
        return sum(
            r["top"][k - 1]["probability"] - r["top"][k]["probability"] < 1e-4 for r in found
        )

    checkpoint = rundir.checkpoint_prefix(demo_checkpoint, 150)
    config = evaluation.resolve_config({}, demo_checkpoint, checkpoint)
    with evaluation.Evaluator(config, None, precision="fp32") as evaluator:
        result = evaluator.evaluate(checkpoint)
    assert result["images"] == 360
    assert 0.2 < result["top1"] < 1.0  # a real network, neither constant nor perfect
    assert abs(top1 - round(result["top1"] * 360)) <= near_ties(1)
    assert abs(top5 - round(result["top5"] * 360)) <= near_ties(5)
    names = {t["label"] for r in found for t in r["top"]}
    assert names <= {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_many_images_show_a_progress_bar_on_a_terminal(demo_checkpoint, image_folder):
    """On a terminal stderr shows how many of the images are done (tqdm); the bar is gone
    before the results are printed."""
    out, err = io.StringIO(), _Terminal()
    args = [image_folder, "--ckpt", demo_checkpoint, "--batch_size", "100", "--top", "1"]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert commands.main("predict", args) == 0
    assert "0/360 [" in err.getvalue() and "image/s]" in err.getvalue()  # tqdm: done/total
    assert len(out.getvalue().splitlines()) == 360


def test_saved_model_predicts_like_the_checkpoint(
    script_runner, demo_checkpoint, image_folder, tmp_path
):
    model_dir = str(tmp_path / "model")
    export.export(export.from_checkpoint(demo_checkpoint), ["savedmodel"], model_dir)
    paths = predict.find_images([os.path.join(image_folder, "3")])
    images, skipped = predict.usable(paths)
    assert skipped == [] and [path for path, _ in images] == paths
    from_checkpoint = predict.Predictor.from_source(export.from_checkpoint(demo_checkpoint))
    from_export = predict.Predictor.from_saved_model(model_dir, None, config_lib.Runtime())
    try:
        expected = from_checkpoint.predict(images, batch_size=7)
        found = from_export.predict(images, batch_size=32)
        np.testing.assert_allclose(found, expected, rtol=1e-4, atol=1e-5)
        assert from_export.labels == from_checkpoint.labels  # labels.txt travelled with it
    finally:
        from_checkpoint.close()
        from_export.close()

    pattern = os.path.join(image_folder, "3", "*.jpg")
    proc = script_runner("run_predict.py", pattern, "--model", model_dir, "--top", "2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == len(paths)
    classes, probabilities = predict.top_k(expected, 2)
    for line, path, row_classes, row_probs in zip(lines, paths, classes, probabilities):
        names = [from_export.labels[c] for c in row_classes]
        assert line == f"{path}: {names[0]} {row_probs[0]:.4f}; {names[1]} {row_probs[1]:.4f}"


def test_find_images_expands_files_folders_and_globs(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ("a/x.jpg", "a/deep/y.PNG", "a/notes.txt", "z.jpeg"):
        (tmp_path / name).write_bytes(b"")
    root = str(tmp_path)
    found = predict.find_images([f"{root}/a", f"{root}/*.jpeg", f"{root}/a/x.jpg"])
    assert found == [f"{root}/a/deep/y.PNG", f"{root}/a/x.jpg", f"{root}/z.jpeg"]
    with pytest.raises(UsageError, match="nothing.jpg: no such file"):
        predict.find_images([f"{root}/nothing.jpg"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="empty: no .jpg/.jpeg/.png/.bmp files"):
        predict.find_images([f"{root}/empty"])


def test_top_k_ranks_best_first():
    probabilities = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]], np.float32)
    classes, probs = predict.top_k(probabilities, 2)
    np.testing.assert_array_equal(classes, [[1, 2], [0, 2]])
    np.testing.assert_allclose(probs, [[0.6, 0.3], [0.5, 0.3]])


def test_cli_non_image_file_exit_2(script_runner, demo_checkpoint, image_folder, tmp_path):
    fake = tmp_path / "notes.jpg"
    fake.write_text("not a picture")
    good = predict.find_images([os.path.join(image_folder, "0")])[0]
    proc = script_runner("run_predict.py", good, fake, "--ckpt", demo_checkpoint)
    assert proc.returncode == 2
    # the bad file is skipped and named, the good one still classified
    assert proc.stderr.strip().splitlines() == [
        f"skipped: {fake}: not an image the decoder reads (JPEG, PNG, BMP, GIF)",
        "error: 1 file(s) skipped, listed above",
    ]
    assert proc.stdout.startswith(f"{good}: ")


def test_cli_flag_errors_come_before_tensorflow_starts(script_runner, tmp_path):
    proc = script_runner("run_predict.py", tmp_path, "--ckpt", tmp_path, "--top", "0")
    assert (proc.returncode, proc.stderr) == (2, "error: --top: must be >= 1, got 0\n")
    proc = script_runner("run_predict.py", tmp_path, "--ckpt", tmp_path, "--model", tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == "error: argument --model: not allowed with argument --ckpt\n"


def test_cli_class_count_mismatch_exit_2(script_runner, demo_checkpoint, image_folder):
    proc = script_runner(
        "run_predict.py", image_folder, "--ckpt", demo_checkpoint, "--class_num", "12"
    )
    assert proc.returncode == 2
    message = proc.stderr.strip()
    assert "\n" not in message
    assert message.startswith(f"error: {demo_checkpoint}/model.ckpt-150: checkpoint has")
    assert "10 classes" in message and "12 classes" in message
