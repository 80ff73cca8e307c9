"""The converter on a tiny real ImageNet-style tree: shards, info, round trip, report, resume, CLI.

The tree holds the awkward files ImageNet really has (a grayscale JPEG, a PNG named .JPEG, a
CMYK JPEG) plus a file that is not an image, so every branch of the image handling runs.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vgg_keras import config
from vgg_keras.compat import tf
from vgg_keras.data import convert, info, pipeline, preprocess, schema
from vgg_keras.errors import UsageError, run_cli

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
    # another shard count would leave two conversions mixed in one folder
    with pytest.raises(UsageError, match="train-00000-of-00003"):
        convert.convert(src, out, **{**kwargs, "train_shards": 2})


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


@pytest.mark.parametrize("style", ["one_per_line", "two_columns"])
def test_flat_val_with_labels_file(tree, tmp_path, style):
    src, synsets = _flat_source(tree, tmp_path)
    labels_file = tmp_path / "val_labels.txt"
    if style == "one_per_line":
        labels_file.write_text("".join(f"{s}\n" for s in synsets))
    else:  # any line order, name without extension, LOC_val_solution.csv-like header
        rows = [f"ILSVRC2012_val_{k + 1:08d},{s} 1 2 3 4" for k, s in enumerate(synsets)]
        labels_file.write_text("ImageId,PredictionString\n" + "\n".join(reversed(rows)) + "\n")
    out = str(tmp_path / "out")
    result = convert.convert(
        src,
        out,
        train_shards=2,
        validation_shards=2,
        workers=1,
        val_labels=str(labels_file),
        progress=False,
    )
    assert result["synsets"] == SYNSETS and result["texts"] == SYNSETS
    assert result["splits"]["validation"] == 6
    records = _records(out, "validation")
    assert [r["filename"] for r in records] == [f"ILSVRC2012_val_{k:08d}.JPEG" for k in range(1, 7)]
    assert [r["synset"] for r in records] == synsets
    assert [r["label"] for r in records] == [SYNSETS.index(s) + 1 for s in synsets]


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
