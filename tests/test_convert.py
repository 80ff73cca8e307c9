"""The converter on a tiny real ImageNet-style tree: shards, info, round trip, report, resume, CLI.

The tree holds the awkward files ImageNet really has (a grayscale JPEG, a PNG named .JPEG, a
CMYK JPEG) plus a file that is not an image, so every branch of the image handling runs.  A
second tree holds what a hostile or careless source has (symlink loops, dangling symlinks, files
beside the class folders, a file name that is not UTF-8), converted once by the real command.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from vgg_keras import config
from vgg_keras.compat import tf
from vgg_keras.data import info, pipeline, preprocess, schema
from vgg_keras.errors import UsageError, run_cli
from vgg_keras.tools import convert

SYNSETS = ["n01440764", "n01443537", "n01484850"]  # deliberately listed sorted
TEXTS = {"n01440764": "tench, Tinca tinca", "n01443537": "goldfish, Carassius auratus"}
TRAIN_SHARDS, VAL_SHARDS = 3, 2
BAD = {  # the files of _build_tree that are not images, and TF's reason
    "train/n01443537/n01443537_0004.JPEG": "Unknown image file format",
    "train/n01484850/n01484850_0003.JPEG": "Invalid JPEG data",
}


def _pixels(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth colour image (JPEG keeps smooth images close to the source)."""
    y, x = np.mgrid[0:height, 0:width]
    r, g, b = np.random.default_rng(seed).uniform(0.3, 1.0, 3)
    img = np.stack(
        [x * 255 * r / width, y * 255 * g / height, (x + y) * 128 * b / (height + width)]
    )
    return np.clip(img.transpose(1, 2, 0) + 40, 0, 255).astype(np.uint8)


def _save(path, kind: str, height: int, width: int, seed: int) -> np.ndarray | None:
    """Write one source file of ``kind``; returns its pixels as a decoder sees them in RGB."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rgb = Image.fromarray(_pixels(height, width, seed))
    image = {"gray": rgb.convert("L"), "cmyk": rgb.convert("CMYK")}.get(kind, rgb)
    buf = io.BytesIO()
    if kind == "bad":
        buf.write(b"this is not an image, whatever its name says")
    else:
        image.save(buf, "PNG" if kind == "png" else "JPEG", quality=92)
    data = buf.getvalue()[: len(buf.getvalue()) // 2 if kind == "truncated" else None]
    with open(path, "wb") as f:
        f.write(data)
    if kind in ("bad", "truncated"):
        return None
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _build_tree(root) -> dict[str, dict]:
    """train/<synset>/ (5 each) and val/<synset>/ (2 each); returns {rel path: expectations}."""
    kinds = {(0, 1): "gray", (1, 2): "png", (2, 0): "cmyk", (1, 4): "bad", (2, 3): "truncated"}
    expected, seed = {}, 0
    for split, per_class in (("train", 5), ("val", 2)):
        for label, synset in enumerate(SYNSETS, 1):
            for k in range(per_class):
                kind = kinds.get((label - 1, k), "rgb") if split == "train" else "rgb"
                if split == "val" and label == 2 and k == 1:
                    kind = "png"  # one re-encoded image goes through the eval pipeline too
                rel = f"{split}/{synset}/{synset}_{k:04d}.JPEG"
                height, width = 30 + 4 * k, 44 - 3 * label
                seed += 1
                pixels = _save(os.path.join(root, rel), kind, height, width, seed)
                expected[rel] = {"label": label, "kind": kind, "shape": (height, width)}
                expected[rel]["pixels"] = pixels
    with open(os.path.join(root, "train", SYNSETS[0], ".DS_Store"), "wb") as f:
        f.write(b"\0junk")  # hidden files are not images and not reported
    return expected


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    expected = _build_tree(str(root))
    text_file = root / "synsets.txt"
    text_file.write_text("".join(f"{s}\t{t}\n" for s, t in TEXTS.items()) + "n099\tunused\n")
    return str(root), expected, str(text_file)


@pytest.fixture(scope="module")
def converted(tree, tmp_path_factory):
    src, expected, text_file = tree
    out = str(tmp_path_factory.mktemp("shards"))
    result = convert.convert(
        src,
        out,
        train_shards=TRAIN_SHARDS,
        validation_shards=VAL_SHARDS,
        workers=1,
        synset_text=text_file,
        progress=False,
    )
    return out, result


def _records(out: str, prefix: str) -> list[dict]:
    """Every record of the ``prefix`` shards, in file order, as plain Python values."""
    rows = []
    for path in sorted(pipeline.list_files(out, prefix)):
        for raw in tf.data.TFRecordDataset(path):
            feats = tf.train.Example.FromString(raw.numpy()).features.feature
            row = {k: feats[k] for k in feats}
            rows.append(
                {
                    "shard": os.path.basename(path),
                    "raw": raw.numpy(),
                    "encoded": row["image/encoded"].bytes_list.value[0],
                    "label": row["image/class/label"].int64_list.value[0],
                    "synset": row["image/class/synset"].bytes_list.value[0].decode(),
                    "text": row["image/class/text"].bytes_list.value[0].decode(),
                    "filename": row["image/filename"].bytes_list.value[0].decode(),
                    "height": row["image/height"].int64_list.value[0],
                    "width": row["image/width"].int64_list.value[0],
                    "channels": row["image/channels"].int64_list.value[0],
                    "colorspace": row["image/colorspace"].bytes_list.value[0].decode(),
                    "format": row["image/format"].bytes_list.value[0].decode(),
                }
            )
    return rows


def _examples(folder: str, name: str) -> list[tf.train.Example]:
    path = os.path.join(folder, name)
    return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]


def _by_name(expected: dict, split_dir: str) -> dict[str, tuple[str, dict]]:
    return {
        os.path.basename(rel): (rel, e)
        for rel, e in expected.items()
        if rel.startswith(split_dir + "/")
    }


def test_shards_info_and_labels(tree, converted):
    src, expected, _ = tree
    out, result = converted
    names = sorted(f for f in os.listdir(out) if f.startswith(("train-", "validation-")))
    assert names == [f"train-0000{k}-of-00003" for k in range(3)] + [
        f"validation-0000{k}-of-00002" for k in range(2)
    ]
    assert result == info.read_info(out)
    good_train = sum(
        1 for r, e in expected.items() if r.startswith("train/") and e["pixels"] is not None
    )
    assert result["splits"] == {"train": 13, "validation": 6} and good_train == 13
    assert result["num_classes"] == 3 and result["label_offset"] == 1
    assert result["synsets"] == SYNSETS
    assert result["texts"] == [TEXTS[SYNSETS[0]], TEXTS[SYNSETS[1]], SYNSETS[2]]
    for name in names:  # the recorded counts are the real ones
        assert result["files"][name] == pipeline.count_records(os.path.join(out, name))
    assert sum(result["files"].values()) == 19
    with open(os.path.join(out, info.LABELS_FILE)) as f:
        assert f.read().splitlines() == [f"{s}\t{t}" for s, t in zip(SYNSETS, result["texts"])]
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_records_match_sources(tree, converted):
    src, expected, _ = tree
    out, result = converted
    for prefix, split_dir in (("train", "train"), ("validation", "val")):
        by_name = _by_name(expected, split_dir)
        records = _records(out, prefix)
        assert sorted(r["filename"] for r in records) == sorted(
            n for n, (_, e) in by_name.items() if e["pixels"] is not None
        )
        for rec in records:
            rel, exp = by_name[rec["filename"]]
            synset = SYNSETS[exp["label"] - 1]
            assert (rec["label"], rec["synset"]) == (exp["label"], synset)
            assert rec["text"] == result["texts"][exp["label"] - 1]
            assert (rec["height"], rec["width"]) == exp["shape"]
            assert rec["format"] == "JPEG"
            with open(os.path.join(src, rel), "rb") as f:
                source_bytes = f.read()
            kept = exp["kind"] in ("rgb", "gray")
            # JPEGs TF reads keep their bytes; PNG and CMYK become new RGB JPEGs.
            assert (rec["encoded"] == source_bytes) == kept, rel
            assert rec["encoded"][:2] == b"\xff\xd8"
            assert convert.jpeg_components(rec["encoded"]) == (1 if exp["kind"] == "gray" else 3)
            assert rec["channels"] == (1 if exp["kind"] == "gray" else 3)
            assert rec["colorspace"] == ("Grayscale" if exp["kind"] == "gray" else "RGB")
            decoded = tf.io.decode_jpeg(rec["encoded"], channels=3).numpy().astype(np.float32)
            diff = np.abs(decoded - exp["pixels"].astype(np.float32))
            assert diff.mean() < 2.0 and diff.max() < 40, (rel, diff.mean(), diff.max())
            jpeg, label, bboxes = schema.parse(rec["raw"])
            assert int(label) == exp["label"] - 1 and bboxes.shape == (1, 0, 4)
            assert bytes(jpeg.numpy()) == rec["encoded"]


def test_train_is_shuffled_validation_sorted(converted):
    out, _ = converted
    train = _records(out, "train")
    val = [r["filename"] for r in _records(out, "validation")]
    assert val == sorted(val)
    assert [r["filename"] for r in train] != sorted(r["filename"] for r in train)
    # shards are contiguous runs of the shuffled list, so each one mixes classes
    for shard in {r["shard"] for r in train}:
        assert len({r["synset"] for r in train if r["shard"] == shard}) > 1, shard


def test_eval_pipeline_reads_every_image_with_exact_labels(tree, converted):
    _, expected, _ = tree
    out, result = converted
    size = 32
    c = config.resolve(
        settings={"data_dir": out, "class_num": 3, "image_size": size}, need_data=False
    )
    split = pipeline.load_split(c.input, "validation")
    assert split.num_examples == 6
    images, labels = [], []
    for batch_images, batch_labels in pipeline.eval_dataset(split, c.network, c.input, 4):
        images.append(batch_images.numpy())
        labels.append(batch_labels.numpy())
    images, labels = np.concatenate(images), np.concatenate(labels)
    val = sorted((rel, e) for rel, e in expected.items() if rel.startswith("val/"))
    assert labels.tolist() == [e["label"] - 1 for _, e in val]
    side = int(round(size * preprocess.EVAL_RESIZE_RATIO))
    std = np.array(preprocess.STDDEV_RGB, np.float32)
    for got, (rel, e) in zip(images, val):
        ref = preprocess.resize_shorter_side(tf.constant(e["pixels"]), side, "standard")
        ref = preprocess.normalize(preprocess.central_crop(ref, size), "imagenet").numpy()
        diff = np.abs(got - ref) * std  # back in 0..255 pixel units
        assert diff.mean() < 2.0 and diff.max() < 40, (rel, diff.mean(), diff.max())


def test_report_lists_unreadable_and_reencoded_files(tree, converted):
    src, expected, _ = tree
    out, _ = converted
    with open(os.path.join(out, convert.REPORT_FILE)) as f:
        lines = f.read().splitlines()
    skipped = [line.split("\t") for line in lines if line.startswith("skipped\t")]
    assert [row[1] for row in skipped] == [os.path.join(src, rel) for rel in sorted(BAD)]
    for row, rel in zip(skipped, sorted(BAD)):
        assert BAD[rel] in row[2], row
    reencoded = {line.split("\t")[1]: line for line in lines if line.startswith("re-encoded\t")}
    for rel, e in expected.items():
        assert (os.path.join(src, rel) in reencoded) == (e["kind"] in ("png", "cmyk"))
        if e["kind"] in ("png", "cmyk"):
            assert e["kind"].upper() in reencoded[os.path.join(src, rel)]
    assert not any(".DS_Store" in line for line in lines)


def test_resume_keeps_finished_shards(tree, converted, tmp_path):
    src, _, text_file = tree
    out = str(tmp_path / "out")
    kwargs = dict(
        train_shards=TRAIN_SHARDS,
        validation_shards=VAL_SHARDS,
        workers=1,
        synset_text=text_file,
        progress=False,
    )
    first = convert.convert(src, out, **kwargs)
    mtimes = {name: os.stat(os.path.join(out, name)).st_mtime_ns for name in first["files"]}
    victim = "train-00001-of-00003"
    os.remove(os.path.join(out, victim))  # as if the first run died before this shard
    with open(os.path.join(out, victim + ".tmp"), "wb") as f:  # a user's file: never deleted
        f.write(b"half a shard")
    second = convert.convert(src, out, **kwargs)
    assert second == first == info.read_info(out)
    for name, mtime in mtimes.items():
        now = os.stat(os.path.join(out, name)).st_mtime_ns
        assert (now == mtime) == (name != victim), name
    with open(os.path.join(out, victim + ".tmp"), "rb") as f:
        assert f.read() == b"half a shard"
    # the rewritten shard is the same shard, and the skipped file is still reported
    assert _examples(out, victim) == _examples(converted[0], victim)
    with open(os.path.join(out, convert.REPORT_FILE)) as f:
        assert os.path.join(src, sorted(BAD)[0]) in f.read()
    # another shard count is another dataset: refused, unless --overwrite replaces the first
    with pytest.raises(UsageError, match=f"{out}/dataset_info.json: the output folder holds"):
        convert.convert(src, out, **{**kwargs, "train_shards": 2})
    assert info.read_info(out) == first
    third = convert.convert(src, out, **{**kwargs, "train_shards": 2}, overwrite=True)
    shards = sorted(n for n in os.listdir(out) if info.SHARD_NAME.fullmatch(n))
    assert shards == sorted(third["files"]) and os.path.exists(os.path.join(out, victim + ".tmp"))


def _flat_source(tree, tmp_path) -> tuple[str, list[str]]:
    """A source with train/ as before and val/ flat; returns (src, synsets of sorted val files)."""
    src, expected, _ = tree
    flat = tmp_path / "flat"
    shutil.copytree(os.path.join(src, "train"), flat / "train")
    (flat / "val").mkdir()
    val = sorted(rel for rel in expected if rel.startswith("val/"))
    # names that sort differently from the class folders, like ILSVRC2012_val_00000001.JPEG
    order = [val[i] for i in (3, 0, 5, 1, 4, 2)]
    for k, rel in enumerate(order):
        shutil.copy(os.path.join(src, rel), flat / "val" / f"ILSVRC2012_val_{k + 1:08d}.JPEG")
    return str(flat), [rel.split("/")[1] for rel in order]


def _labels_file(tmp_path, style: str, synsets: list[str]) -> str:
    """A stand-in of one of the files ImageNet's validation labels come in."""
    if style == "tf_slim":  # imagenet_2012_validation_synset_labels.txt: a synset a line
        path = tmp_path / "imagenet_2012_validation_synset_labels.txt"
        path.write_text("".join(f"{s}\n" for s in synsets))
    elif style == "kaggle_csv":  # LOC_val_solution.csv: any row order, boxes after the synset
        path = tmp_path / "LOC_val_solution.csv"
        rows = [f"ILSVRC2012_val_{k + 1:08d},{s} 1 2 3 4" for k, s in enumerate(synsets)]
        path.write_text("ImageId,PredictionString\n" + "\n".join(reversed(rows)) + "\n")
    else:  # the devkit: 1-based ILSVRC ids, mapped to synsets by data/meta.mat
        import scipy.io

        ids = {s: i for i, s in enumerate([SYNSETS[2], SYNSETS[0], "n00001740", SYNSETS[1]], 1)}
        data = tmp_path / "ILSVRC2012_devkit_t12" / "data"
        data.mkdir(parents=True)
        fields = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O")]
        rows = np.array([(i, s, f"words {i}") for s, i in ids.items()], dtype=fields)
        scipy.io.savemat(str(data / "meta.mat"), {"synsets": rows})
        folder = data if style == "devkit" else data.parent / "evaluation"  # or in ../data
        folder.mkdir(exist_ok=True)
        path = folder / "ILSVRC2012_validation_ground_truth.txt"
        path.write_text("".join(f"{ids[s]}\n" for s in synsets))
    return str(path)


@pytest.mark.parametrize("style", ["tf_slim", "kaggle_csv", "devkit", "devkit_data"])
def test_flat_val_with_labels_file(tree, tmp_path, style, capsys):
    """ImageNet's flat val/ with each of the files its labels come in: one command."""
    src, synsets = _flat_source(tree, tmp_path)
    out = str(tmp_path / "out")
    args = [src, out, "--train_shards", "2", "--validation_shards", "2", "--workers", "1"]
    assert (
        run_cli(convert.main, [*args, "--val_labels", _labels_file(tmp_path, style, synsets)]) == 0
    )
    result = info.read_info(out)
    assert result["synsets"] == SYNSETS and result["texts"] == SYNSETS
    assert result["splits"]["validation"] == 6
    records = _records(out, "validation")
    assert [r["filename"] for r in records] == [f"ILSVRC2012_val_{k:08d}.JPEG" for k in range(1, 7)]
    assert [r["synset"] for r in records] == synsets
    assert [r["label"] for r in records] == [SYNSETS.index(s) + 1 for s in synsets]


def test_flat_val_says_which_labels_file_it_needs(tree, tmp_path, capsys):
    src, synsets = _flat_source(tree, tmp_path)
    out = tmp_path / "out"
    assert run_cli(convert.main, [src, str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {src}/val: 6 images and no class folders (ImageNet's flat val/)")
    for name in (
        "ILSVRC2012_validation_ground_truth.txt",
        "imagenet_2012_validation_synset_labels",
    ):
        assert name in err
    assert "LOC_val_solution.csv" in err and err.count("\n") == 1 and not out.exists()
    # the devkit's ids without its meta.mat: the flag and the file named
    (tmp_path / "ids.txt").write_text("".join(f"{k}\n" for k in range(1, 7)))
    assert run_cli(convert.main, [src, str(out), "--val_labels", str(tmp_path / "ids.txt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --val_labels {tmp_path}/ids.txt: ILSVRC ids: the devkit's meta")


def _files(folder) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) and its bytes."""
    return {
        os.path.relpath(os.path.join(d, n), folder): open(os.path.join(d, n), "rb").read()
        for d, _, names in os.walk(folder)
        for n in names
    }


def test_another_datasets_folder_is_left_as_it_was(tree, converted, tmp_path, capsys):
    """A second source into a folder holding a dataset, and a user's own labels.txt and report,
    are refused before anything is written: the folder stays byte for byte."""
    out = tmp_path / "first"
    shutil.copytree(converted[0], out)
    before = _files(out)
    second = shutil.copytree(tree[0], tmp_path / "copy")  # another source, the same names
    args = ["--train_shards", str(TRAIN_SHARDS), "--validation_shards", str(VAL_SHARDS)]
    assert run_cli(convert.main, [str(second), str(out), *args, "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: {out}/dataset_info.json: the output folder holds another dataset's files; use "
        "an empty folder, or --overwrite to replace that dataset\n"
    )
    assert _files(out) == before
    for name in (info.LABELS_FILE, info.REPORT_FILE):
        mine = tmp_path / name.split(".")[0]
        mine.mkdir()
        (mine / name).write_text("the user's own file\n")
        assert run_cli(convert.main, [tree[0], str(mine), "--workers", "1"]) == 2
        assert f"error: {mine}/{name}: the output folder holds" in capsys.readouterr().err
        assert _files(mine) == {name: b"the user's own file\n"}


def test_an_interrupted_overwrite_is_unfinished_until_the_same_command_finishes_it(
    tree, converted, tmp_path, monkeypatch, capsys
):
    """--overwrite, stopped after its first shard: readers refuse the folder in one line (it is
    no dataset, neither the old nor the new); the same command again keeps that shard."""
    from vgg_keras.tools import diagnose

    out = tmp_path / "out"
    shutil.copytree(converted[0], out)
    second, _ = _flat_source(tree, tmp_path)
    command = [second, str(out), "--workers", "1", "--overwrite", "--val_labels"]
    command.append(_labels_file(tmp_path, "tf_slim", _flat_source(tree, tmp_path / "x")[1]))
    write, calls = convert.convert_shard, []

    def stopped_after_one(task):
        if calls:
            raise KeyboardInterrupt
        calls.append(task.name)
        return write(task)

    monkeypatch.setattr(convert, "convert_shard", stopped_after_one)
    assert run_cli(convert.main, command) == 130
    assert capsys.readouterr().err.endswith(convert.INTERRUPTED + "\n")
    unfinished = f"error: {out}: an unfinished dataset (no dataset_info.json yet): run the command"
    assert run_cli(diagnose.main, [str(out)]) == 2
    assert capsys.readouterr().err.startswith(unfinished)
    with pytest.raises(UsageError, match="an unfinished dataset"):
        pipeline.list_files(str(out), "train")
    first_shard = os.stat(out / calls[0]).st_mtime_ns
    monkeypatch.setattr(convert, "convert_shard", write)
    assert run_cli(convert.main, command) == 0
    assert os.stat(out / calls[0]).st_mtime_ns == first_shard
    assert info.read_info(str(out))["name"] == "flat"
    assert run_cli(diagnose.main, [str(out)]) == 0


def test_a_class_whose_files_vanish_is_an_error(tmp_path, monkeypatch, capsys):
    src = _single_folder(tmp_path / "src", {"a": 3, "b": 2})
    scan = convert.scan_source

    def scan_then_delete(*args, **kwargs):  # the files disappear once the scan has listed them
        found = scan(*args, **kwargs)
        shutil.rmtree(os.path.join(src, "b"))
        return found

    monkeypatch.setattr(convert, "scan_source", scan_then_delete)
    out = tmp_path / "out"
    assert run_cli(convert.main, [src, str(out), "--workers", "1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert (
        err[-1]
        == f"error: {src}/b: no readable images (listed in the report); the class would be empty"
    )
    assert not (out / info.INFO_FILE).exists()


def test_cli_matches_in_process_conversion(tree, converted, tmp_path):
    """The real command, with a process pool, writes the same records in the same order."""
    src, _, text_file = tree
    out = str(tmp_path / "cli")
    cmd = [sys.executable, "-m", "vgg_keras.data.convert", src, out, "--train_shards", "3"]
    cmd += ["--validation_shards", "2", "--workers", "2", "--synset_text", text_file]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "skipped 2 unreadable file(s)" in proc.stderr
    assert "3 classes, {'train': 13, 'validation': 6} records in 5 shards" in proc.stdout
    assert info.read_info(out) == converted[1]
    for name in converted[1]["files"]:
        # Example maps serialise in hash order, so compare records, not bytes
        assert _examples(out, name) == _examples(converted[0], name), name


def test_cli_bad_source_exit_code(tmp_path):
    missing = str(tmp_path / "nowhere")
    cmd = [sys.executable, "-m", "vgg_keras.data.convert", missing, str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: source folder not found: {missing}"
    assert "Traceback" not in proc.stderr


def _bad_sources(root) -> dict[str, tuple[list[str], str]]:
    """{case: (extra argv, path the message must name)} for malformed sources."""
    cases = {}
    (root / "empty").mkdir()
    cases["no_train_or_val"] = ([str(root / "empty")], str(root / "empty"))
    (root / "noclass" / "train").mkdir(parents=True)
    labels = root / "labels.txt"
    labels.write_text(f"{SYNSETS[0]}\n")
    cases["val_labels_without_val"] = ([str(root / "noclass"), "--val_labels", str(labels)], "val/")
    cases["no_class_folders"] = ([str(root / "noclass")], str(root / "noclass" / "train"))
    (root / "noimages" / "train" / SYNSETS[0]).mkdir(parents=True)
    cases["no_images"] = ([str(root / "noimages")], str(root / "noimages" / "train"))
    flat = root / "flat"
    (flat / "train" / SYNSETS[0]).mkdir(parents=True)
    (flat / "train" / SYNSETS[0] / "a.JPEG").write_bytes(b"x")
    (flat / "val").mkdir()
    (flat / "val" / "v1.JPEG").write_bytes(b"x")
    (flat / "val" / "v2.JPEG").write_bytes(b"x")
    cases["flat_val_without_labels"] = ([str(flat)], str(flat / "val"))
    short = root / "short.txt"
    short.write_text(f"{SYNSETS[0]}\n")
    cases["labels_count"] = ([str(flat), "--val_labels", str(short)], str(short))
    alien = root / "alien.txt"
    alien.write_text("n99999999\nn99999999\n")
    cases["unknown_synset"] = ([str(flat), "--val_labels", str(alien)], str(alien))
    cases["missing_labels_file"] = ([str(flat), "--val_labels", str(root / "no.txt")], "no.txt")
    shutil.copytree(flat / "train", root / "few" / "train")
    cases["too_many_shards"] = ([str(root / "few"), "--train_shards", "2"], str(root / "few"))
    binary = root / "binary.txt"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe\x00")
    cases["binary_val_labels"] = (
        [str(flat), "--val_labels", str(binary)],
        f"--val_labels {binary}",
    )
    cases["binary_synset_text"] = (
        [str(root / "few"), "--synset_text", str(binary)],
        f"--synset_text {binary}",
    )
    (root / "hollow" / "train" / "empty").mkdir(parents=True)
    (root / "hollow" / "train" / "empty" / ".DS_Store").write_bytes(b"\0")
    shutil.copytree(flat / "train" / SYNSETS[0], root / "hollow" / "train" / SYNSETS[0])
    cases["empty_class_folder"] = (
        [str(root / "hollow")],
        f"{root / 'hollow' / 'train' / 'empty'}: empty class folder",
    )
    cases["val_fraction_beside_val"] = ([str(flat), "--val_fraction", "0.2"], "--val_fraction")
    cases["val_fraction_range"] = ([str(root / "few"), "--val_fraction", "1.5"], "--val_fraction")
    return cases


CASES = [
    "no_train_or_val",
    "no_class_folders",
    "val_labels_without_val",
    "no_images",
    "flat_val_without_labels",
    "labels_count",
    "unknown_synset",
    "missing_labels_file",
    "too_many_shards",
    "binary_val_labels",
    "binary_synset_text",
    "empty_class_folder",
    "val_fraction_beside_val",
    "val_fraction_range",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_naming_the_path(tmp_path, capsys, case):
    argv, path = _bad_sources(tmp_path)[case]
    source, extra = argv[0], argv[1:]
    code = run_cli(convert.main, [source, str(tmp_path / "out"), "--workers", "1", *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert path in err, err
    assert not (tmp_path / "out").exists()  # refused before anything was written


# ---------------------------------------------------------------- hostile sources


def _jpeg(path, seed: int, side: int = 40) -> bytes:
    """A random RGB JPEG at ``path`` (str or bytes); returns its bytes."""
    pixels = np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG")
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return buf.getvalue()


def _convert_cli(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "vgg_keras.data.convert", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def _report_rows(out) -> list[list[str]]:
    with open(os.path.join(out, convert.REPORT_FILE)) as f:
        return [line.split("\t") for line in f.read().splitlines() if not line.startswith("#")]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """(src, out, finished process) of the real command on a hostile tree, default shard counts.

    train/a: 4 JPEGs, one more whose name is the bytes b"bad\\xff.JPEG", the first 200 bytes of
    a JPEG (libjpeg: "Improper call to JPEG library in state 201"), and loop -> .. ;
    train/b: 4 JPEGs, half of a JPEG (its header intact), linked -> a folder outside SRC with 2
    JPEGs, and a dangling symlink; train/loose.JPEG beside the class folders; val/a, val/b.
    """
    root = tmp_path_factory.mktemp("hostile")
    src, extra = root / "src", root / "extra"
    for k in range(4):
        _jpeg(str(src / "train" / "a" / f"{k}.JPEG"), k)
        _jpeg(str(src / "train" / "b" / f"{k}.JPEG"), 10 + k)
    _jpeg(os.path.join(os.fsencode(src / "train" / "a"), b"bad\xff.JPEG"), 20)
    whole = _jpeg(str(root / "whole.JPEG"), 21)
    (src / "train" / "a" / "header.JPEG").write_bytes(whole[:200])
    (src / "train" / "b" / "half.JPEG").write_bytes(whole[: len(whole) // 2])
    os.symlink("..", src / "train" / "a" / "loop")
    for k in range(2):
        _jpeg(str(extra / f"e{k}.JPEG"), 30 + k)
    os.symlink(os.path.join("..", "..", "..", "extra"), src / "train" / "b" / "linked")
    os.symlink("nowhere.JPEG", src / "train" / "b" / "gone.JPEG")
    _jpeg(str(src / "train" / "loose.JPEG"), 40)
    _jpeg(str(src / "val" / "a" / "v0.JPEG"), 50)
    _jpeg(str(src / "val" / "b" / "v1.JPEG"), 51)
    out = root / "out"
    proc = _convert_cli(src, out, "--workers", "1")
    return str(src), str(out), proc


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


def test_hostile_source_converts_what_is_there(hostile):
    src, out, proc = hostile
    _ok(proc)
    meta = info.read_info(out)
    # a: 4 + the non-UTF-8 name; b: 4 + 2 through the symlinked folder; loose.JPEG is no class's
    assert meta["splits"] == {"train": 11, "validation": 2} and meta["num_classes"] == 2
    records = _records(out, "train")
    by_class = {s: sorted(r["filename"] for r in records if r["synset"] == s) for s in "ab"}
    assert by_class == {
        "a": ["0.JPEG", "1.JPEG", "2.JPEG", "3.JPEG", "bad\ufffd.JPEG"],
        "b": ["0.JPEG", "1.JPEG", "2.JPEG", "3.JPEG", "e0.JPEG", "e1.JPEG"],
    }


def test_symlink_loop_is_skipped_and_reported(hostile):
    src, out, proc = hostile
    loop = os.path.join(src, "train", "a", "loop")
    assert ["skipped", loop, convert.LOOP] in _report_rows(out)
    lines = [line for line in proc.stderr.splitlines() if loop in line]
    assert lines == [
        f"convert: skipped {loop}: {convert.LOOP}; listed in {out}/{convert.REPORT_FILE}"
    ]


def test_dangling_symlink_and_loose_file_are_reported(hostile):
    src, out, proc = hostile
    gone, loose = (os.path.join(src, "train", *p) for p in (("b", "gone.JPEG"), ("loose.JPEG",)))
    rows = _report_rows(out)
    assert ["skipped", gone, convert.DANGLING] in rows
    assert ["ignored", loose, convert.LOOSE] in rows
    for path, what in ((gone, convert.DANGLING), (loose, convert.LOOSE)):
        assert len([line for line in proc.stderr.splitlines() if path in line]) == 1
        assert f"{path}: {what}" in proc.stderr


def test_non_utf8_file_name_is_converted_and_reported(hostile):
    src, out, proc = hostile
    shown = os.path.join(src, "train", "a", "bad\\xff.JPEG")  # the report's escape of the byte
    assert ["note", shown, convert.NOT_UTF8] in _report_rows(out)
    assert shown in proc.stderr
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


def test_damaged_jpegs_are_skipped_without_native_decoder_noise(hostile):
    src, out, proc = hostile
    skipped = {row[1] for row in _report_rows(out) if row[0] == "skipped"}
    for name in ("a/header.JPEG", "b/half.JPEG"):
        assert os.path.join(src, "train", name) in skipped
    # libjpeg's own lines ("Improper call to JPEG library in state 201", "Premature end of JPEG
    # data") go straight to file descriptor 2: every line there must be the converter's.
    lines = [line for line in re.split(r"[\r\n]+", proc.stderr) if line.strip()]
    assert lines and all(line.startswith(("convert:", "warning:")) for line in lines), lines


def test_encode_image_is_quiet_and_raises_bad_image(tmp_path, capfd):
    whole = _jpeg(str(tmp_path / "x.JPEG"), 3)
    for data in (whole[:200], whole[: len(whole) // 2], b"\xff\xd8 not a JPEG after all"):
        with pytest.raises(convert.BadImage):
            convert.encode_image(data)
    assert convert.jpeg_components(whole[:200]) is None
    assert capfd.readouterr().err == ""


def test_a_nested_non_utf8_file_name_is_reported_once(tmp_path):
    folder = os.fsencode(tmp_path / "src" / "train" / "a" / "sub" / "deeper")
    _jpeg(os.path.join(folder, b"bad\xff.JPEG"), 1)
    scan = convert._Scan(str(tmp_path / "src"), str(tmp_path / "out"))
    found = scan.files_under("train/a")
    assert len(found) == 1
    assert scan.notes == [("note", found[0], convert.NOT_UTF8)]


def test_non_utf8_class_folder_is_refused_before_anything_is_written(tmp_path, capsys):
    src = tmp_path / "src"
    _jpeg(os.path.join(os.fsencode(src / "train"), b"cl\xe9", b"0.JPEG"), 0)
    _jpeg(str(src / "train" / "ok" / "0.JPEG"), 1)
    out = tmp_path / "out"
    assert run_cli(convert.main, [str(src), str(out), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {src}/train/cl\\xe9: class folder name is not UTF-8; rename it\n"
    assert not out.exists()


@pytest.mark.parametrize("name", ["a\nb", "a\tb"])
def test_class_folder_with_a_tab_or_line_break_is_refused(tmp_path, capsys, name):
    """labels.txt holds one class a line, synset and text tab-separated."""
    src = tmp_path / "src"
    for folder in (name, "ok"):
        _jpeg(str(src / "train" / folder / "0.JPEG"), 0)
    out = tmp_path / "out"
    assert run_cli(convert.main, [str(src), str(out), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    escaped = name.replace("\n", "\\n").replace("\t", "\\t")
    assert (
        err
        == f"error: {src}/train/{escaped}: class folder name holds a tab or line break; rename it\n"
    )
    assert not out.exists()


def test_a_usage_mistake_is_one_line(capsys):
    assert run_cli(convert.main, ["only_the_source"]) == 2
    assert capsys.readouterr().err == "error: the following arguments are required: out\n"


def test_output_folder_inside_the_source_is_left_out(tmp_path, capsys):
    src = tmp_path / "src"
    for k in range(3):
        _jpeg(str(src / "train" / "a" / f"{k}.JPEG"), k)
        _jpeg(str(src / "train" / "b" / f"{k}.JPEG"), 9 + k)
    out = src / "train" / "tfrecords"
    kwargs = dict(workers=1, progress=False)
    first = convert.convert(str(src), str(out), **kwargs)
    mtimes = {n: os.stat(out / n).st_mtime_ns for n in first["files"]}
    second = convert.convert(str(src), str(out), **kwargs)  # now OUT exists inside train/
    assert second == first and second["num_classes"] == 2 and second["synsets"] == ["a", "b"]
    assert {n: os.stat(out / n).st_mtime_ns for n in second["files"]} == mtimes
    assert ["ignored", str(out), "the output folder"] in _report_rows(out)
    assert f"convert: ignored {out}: the output folder" in capsys.readouterr().err


# ---------------------------------------------------------------- Ctrl-C and SIGTERM


def _tensorflow_loading(pid: int) -> bool:
    """True once ``pid`` has mapped TensorFlow's library: its import has begun (seconds)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return "libtensorflow" in f.read()
    except OSError:
        return False


def _stop_converter(src, out, signum: int, ready) -> subprocess.CompletedProcess:
    """The command with 2 workers; ``signum`` to its main process alone (what ``kill PID``
    does) once ``ready(pid)`` holds."""
    command = [sys.executable, "-m", "vgg_keras.data.convert", str(src), str(out)]
    command += ["--train_shards", "4", "--workers", "2"]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while not ready(proc.pid):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.002)
        os.kill(proc.pid, signum)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.parametrize(
    "signum,when",
    [
        (signal.SIGINT, "importing"),
        (signal.SIGTERM, "importing"),
        (signal.SIGTERM, "writing"),
        (signal.SIGHUP, "writing"),
    ],
    ids=["sigint-importing", "sigterm-importing", "sigterm-writing", "sighup-writing"],
)
def test_stop_signal_is_one_line_and_leaves_no_half_written_shard(tmp_path, signum, when):
    src, out = tmp_path / "src", tmp_path / "out"
    count, side = (8, 24) if when == "importing" else (400, 160)
    for k in range(count):
        _jpeg(str(src / "train" / "ab"[k % 2] / f"{k}.JPEG"), k, side)

    def staging(pid: int) -> bool:  # a worker is writing a shard
        return out.exists() and any(n.endswith(".tmp") for n in os.listdir(out))

    proc = _stop_converter(
        src, out, signum, _tensorflow_loading if when == "importing" else staging
    )
    code = 128 + signum  # 130, 143, 129
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == convert.INTERRUPTED, proc.stderr[-3000:]
    if out.exists():
        assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
        for name in os.listdir(out):  # the shards that are there are whole
            if name.startswith("train-"):
                assert pipeline.count_records(str(out / name)) == count // 4


# ---------------------------------------------------------------- dataset_info.json's schema

GOOD_INFO = {
    "name": "x",
    "num_classes": 2,
    "label_offset": 1,
    "splits": {"train": 3},
    "files": {"train-00000-of-00001": 3},
    "synsets": ["a", "b"],
    "texts": ["a", "b"],
    "made_by": "someone else's tool",  # unknown keys are allowed
}


@pytest.mark.parametrize(
    "change,key",
    [
        ({"num_classes": "10"}, "num_classes"),
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": True}, "num_classes"),
        ({"label_offset": 1.0}, "label_offset"),
        ({"files": 5}, "files"),
        ({"files": {"train-00000-of-00001": "3"}}, 'files["train-00000-of-00001"]'),
        ({"splits": {"train": -1}}, 'splits["train"]'),
        ({"synsets": "ab"}, "synsets"),
        ({"texts": ["a", 2]}, "texts[1]"),
        ({"name": 7}, "name"),
    ],
)
def test_read_info_names_the_file_and_the_key_of_a_wrong_type(tmp_path, change, key):
    path = tmp_path / info.INFO_FILE
    path.write_text(json.dumps({**GOOD_INFO, **change}))
    with pytest.raises(UsageError) as raised:
        info.read_info(str(tmp_path))
    message = str(raised.value)
    assert message.startswith(f"{path}: {key} must be ") and "\n" not in message, message


@pytest.mark.parametrize(
    "content,why",
    [
        (b"[1, 2]", "expected a mapping, found a list"),
        (b'{"name": "\xff"}', "not UTF-8"),
        (b"{", ""),
        (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    ],
)
def test_read_info_refuses_a_file_that_is_no_json_object(tmp_path, content, why):
    (tmp_path / info.INFO_FILE).write_bytes(content)
    with pytest.raises(UsageError, match=re.escape(f"{tmp_path / info.INFO_FILE}: ")) as raised:
        info.read_info(str(tmp_path))
    assert why in str(raised.value)


def test_read_info_returns_a_valid_file_as_it_is(tmp_path):
    (tmp_path / info.INFO_FILE).write_text(json.dumps(GOOD_INFO))
    assert info.read_info(str(tmp_path)) == GOOD_INFO
    assert info.read_info(str(tmp_path / "nothing")) == {}


# ---------------------------------------------------------------- shard counts


def test_shard_count_rule():
    # TF-slim's ImageNet layout: 1,281,167 training images in 1,024 shards
    assert convert.shard_count(1281167) == 1024
    assert convert.shard_count(50000) == 32
    counts = [convert.shard_count(n) for n in range(1, 20000)]
    assert all(1 <= c <= n for n, c in enumerate(counts, 1))
    assert counts == sorted(counts) and counts[1000] == 1 and counts[-1] == 16
    assert all(c & (c - 1) == 0 for c in counts)  # powers of two


def test_small_source_gets_few_shards_by_default(tmp_path):
    src = tmp_path / "src"
    for c in range(3):  # 3 classes x 26 images, split 20 / 6
        for k in range(26):
            _jpeg(str(src / ("train" if k < 20 else "val") / f"c{c}" / f"{k}.JPEG"), 26 * c + k, 16)
    result = convert.convert(str(src), str(tmp_path / "out"), workers=1, progress=False)
    assert result["files"] == {"train-00000-of-00001": 60, "validation-00000-of-00001": 18}


# ---------------------------------------------------------------- --val_fraction


def _single_folder(root, per_class: dict[str, int], nested: str = "") -> str:
    """``root/<nested>/<class>/*.JPEG`` with ``per_class`` images each, a README beside them."""
    folder = root / nested if nested else root
    for c, (synset, count) in enumerate(sorted(per_class.items())):
        for k in range(count):
            _jpeg(str(folder / synset / f"{synset}_{k}.JPEG"), 100 * c + k, 16)
    (folder / "README.txt").write_text("not an image\n")
    return str(root)


PER_CLASS = {"c0": 10, "c1": 7, "c2": 2, "c3": 1}
# round(0.2 * n), at least 1 and at most n - 1, none of a single image: the rule docs/data.md gives
SET_ASIDE = {"c0": 2, "c1": 1, "c2": 1, "c3": 0}


@pytest.mark.parametrize("layout", ["single_folder", "train_only"])
def test_val_fraction_sets_aside_part_of_each_class(tmp_path, capsys, layout):
    nested = "train" if layout == "train_only" else ""
    src = _single_folder(tmp_path / "src", PER_CLASS, nested)
    out = str(tmp_path / "out")
    kwargs = dict(val_fraction=0.2, workers=1, progress=False)
    result = convert.convert(src, out, **kwargs)
    val = _records(out, "validation")
    train = _records(out, "train")
    per_class = {s: sum(r["synset"] == s for r in val) for s in PER_CLASS}
    assert per_class == SET_ASIDE
    assert sorted(r["filename"] for r in val + train) == sorted(
        f"{s}_{k}.JPEG" for s, n in PER_CLASS.items() for k in range(n)
    )
    assert result["splits"] == {"train": 16, "validation": 4} == info.read_info(out)["splits"]
    assert result["val_split"] == {
        "from": nested or ".", "fraction": 0.2, "seed": convert.SPLIT_SEED, "images": 4
    }  # fmt: skip
    with open(os.path.join(out, convert.REPORT_FILE)) as f:
        report = f.read()
    assert "--val_fraction 0.2 --split_seed 0" in report.splitlines()[1]
    readme = os.path.join(src, nested, "README.txt") if nested else os.path.join(src, "README.txt")
    assert ["ignored", readme, convert.LOOSE] in _report_rows(out)
    assert ["note", os.path.join(src, nested, "c3") if nested else os.path.join(src, "c3"),
            "1 image: none for validation"] in _report_rows(out)  # fmt: skip
    assert "warning:" not in capsys.readouterr().err
    # the same arguments again: the same split, every shard kept as it is
    mtimes = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in result["files"]}
    assert convert.convert(src, out, **kwargs) == result
    assert {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in result["files"]} == mtimes
    # another seed, another choice, as many per class
    other = str(tmp_path / "other")
    convert.convert(src, other, **{**kwargs, "split_seed": 1})
    other_val = _records(other, "validation")
    assert {s: sum(r["synset"] == s for r in other_val) for s in PER_CLASS} == SET_ASIDE
    assert sorted(r["filename"] for r in other_val) != sorted(r["filename"] for r in val)


def test_val_fraction_through_the_command(tmp_path):
    src = _single_folder(tmp_path / "src", {"x": 5, "y": 5})
    out = tmp_path / "out"
    proc = _ok(
        _convert_cli(src, out, "--val_fraction", "0.2", "--split_seed", "3", "--workers", "1")
    )
    assert "2 classes, {'train': 8, 'validation': 2} records in 2 shards" in proc.stdout
    meta = json.loads((out / info.INFO_FILE).read_text())
    assert meta["val_split"] == {"from": ".", "fraction": 0.2, "seed": 3, "images": 2}


def test_source_without_validation_warns_once(tmp_path, capsys):
    src = _single_folder(tmp_path / "src", {"x": 3, "y": 3})
    result = convert.convert(src, str(tmp_path / "out"), workers=1, progress=False)
    assert result["splits"] == {"train": 6}
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: {src}: no validation images")
    assert "--val_fraction" in warnings[0]
