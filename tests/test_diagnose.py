"""Bad data: diagnose names the file and record; the pipelines raise, or skip with skip_corrupt.

Each case breaks record 5 of 12 (labels 1..12, two shards dealt round-robin), which is record 2
of shard 1.
"""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from vgg_keras import compat, config
from vgg_keras.compat import tf
from vgg_keras.data import info, pipeline, schema
from vgg_keras.errors import run_cli
from vgg_keras.tools import diagnose

NUM = 12  # records and classes
SIZE = 32
KINDS = {
    # kind: (reason pattern, whether it breaks the eval pipeline too)
    "garbage_bytes": ("image/encoded \\(\\d+ bytes\\) is not a decodable JPEG image", True),
    "half_a_jpeg": ("is not a decodable JPEG image", True),
    # decode_jpeg (eval) also decodes PNG; extract_jpeg_shape (train) does not.
    "png_bytes": ("is not a decodable JPEG image", False),
    "label_zero": ("label -1 \\(stored 0 minus label_offset 1\\) is outside \\[0, 12\\)", True),
    "label_too_high": (
        "label 12 \\(stored 13 minus label_offset 1\\) is outside \\[0, 12\\)",
        True,
    ),
    "not_an_example": ("not a TF-slim tf.train.Example", True),
    "truncated_file": ("truncated or corrupt record", True),
    "box_outside_image": ("bounding box coordinate is outside \\[0, 1\\]", False),
}


def _parts(**settings):
    """(Network, Input) for these records: NUM classes at SIZE pixels."""
    values = {"class_num": NUM, "image_size": SIZE, **settings}
    c = config.resolve(settings=values, need_data=False)
    return c.network, c.input


def _eval(split, skip_corrupt=False):
    network, inp = _parts(skip_corrupt=skip_corrupt)
    return pipeline.eval_dataset(split, network, inp, 4)


def _train(split, skip_corrupt=False):
    network, inp = _parts(batch_size=1, shuffle_buffer=NUM, skip_corrupt=skip_corrupt)
    return pipeline.train_dataset(split, network, inp, seed=0)


def _record_offsets(path: str) -> list[int]:
    """Byte offsets where each record starts (TFRecord framing: length, crc, data, crc)."""
    offsets, pos, size = [], 0, os.path.getsize(path)
    with open(path, "rb") as f:
        while pos < size:
            offsets.append(pos)
            f.seek(pos)
            (length,) = struct.unpack("<Q", f.read(8))
            pos += 8 + 4 + length + 4
    return offsets


def _replace_record(path: str, index: int, data: bytes) -> None:
    records = [r.numpy() for r in tf.data.TFRecordDataset(path)]
    records[index] = data
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)


def _build(directory: str, shard_writer, jpeg_encoder, kind: str):
    """(shard paths, labels (0-based) of the records a pipeline can still use)."""
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(NUM)]
    labels = list(range(1, NUM + 1))
    bboxes = [None] * NUM
    good = set(range(NUM)) - {5}
    if kind == "garbage_bytes":
        images[5] = b"\xff\xd8\xff\xe0 these bytes are not an image " * 3
    elif kind == "half_a_jpeg":
        jpeg = jpeg_encoder(images[5])
        images[5] = jpeg[: len(jpeg) // 2]
    elif kind == "png_bytes":
        images[5] = tf.image.encode_png(images[5]).numpy()
    elif kind == "label_zero":
        labels[5] = 0
    elif kind == "label_too_high":
        labels[5] = NUM + 1
    elif kind == "box_outside_image":
        bboxes[5] = [(-0.5, 0.0, 1.5, 1.0)]
    paths = shard_writer(directory, images, labels, num_shards=2, bboxes=bboxes, num_classes=NUM)
    if kind == "not_an_example":
        _replace_record(paths[1], 2, b"these bytes are no tf.train.Example")
    elif kind == "truncated_file":
        # Cut shard 1 in the middle of its record 2: records 5, 7, 9, 11 are lost.
        with open(paths[1], "r+b") as f:
            f.truncate(_record_offsets(paths[1])[2] + 30)
        good -= {7, 9, 11}
    return paths, good


@pytest.fixture(scope="module", params=sorted(KINDS))
def broken(request, tmp_path_factory, shard_writer, jpeg_encoder):
    """(kind, shard paths, usable labels); the files are shared, so tests must not change them."""
    directory = str(tmp_path_factory.mktemp(request.param))
    paths, good = _build(directory, shard_writer, jpeg_encoder, request.param)
    return request.param, paths, good


def test_clean_data_has_no_bad_record(tmp_path, shard_writer, jpeg_encoder, demo_dir):
    paths, _ = _build(str(tmp_path), shard_writer, jpeg_encoder, "clean")
    assert diagnose.find_bad_record(paths, NUM) is None
    assert diagnose.count_bad_records(paths, NUM) == 0
    # Grayscale JPEGs, 1,797 of them: no false alarm.
    demo_files = pipeline.list_files(demo_dir, "train") + pipeline.list_files(
        demo_dir, "validation"
    )
    assert diagnose.find_bad_record(demo_files, 10) is None


def test_find_bad_record_names_file_record_and_reason(broken):
    kind, paths, _ = broken
    bad = diagnose.find_bad_record(paths, NUM)
    assert bad is not None
    assert (bad.file, bad.index) == (paths[1], 2)
    assert re.search(KINDS[kind][0], bad.reason), bad.reason
    assert str(bad) == bad.message == f"{paths[1]}: record 2: {bad.reason}"
    assert "\n" not in str(bad)
    assert diagnose.count_bad_records(paths, NUM) == 1


def test_eval_pipeline_raises_or_skips(broken):
    kind, paths, good = broken
    split = pipeline.Split("train", tuple(paths), (6, 6))
    if not KINDS[kind][1]:
        good = set(range(NUM))
    else:
        with pytest.raises(tf.errors.OpError):
            list(_eval(split))
    skipped = _eval(split, skip_corrupt=True)
    labels = [int(y) for _, ys in skipped for y in ys.numpy()]
    assert sorted(labels) == sorted(good)


def test_train_pipeline_raises_or_skips(broken):
    _, paths, good = broken
    split = pipeline.Split("train", tuple(paths), (6, 6))
    with pytest.raises(tf.errors.OpError):
        list(_train(split).take(NUM))
    # With skip_corrupt the first epoch is exactly the usable records.
    skipped = _train(split, skip_corrupt=True)
    labels = [int(ys[0]) for _, ys in skipped.take(len(good))]
    assert sorted(labels) == sorted(good)


def test_first_problem_in_file_order_and_count_of_all(tmp_path, shard_writer):
    # 9 records in 3 shards: shard s holds records s, s + 3, s + 6.
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (24, 24, 3), dtype=np.uint8) for _ in range(9)]
    labels = list(range(1, 10))
    labels[6] = 0  # shard 0, record 2: its last record
    images[4] = b"not a jpeg"  # shard 1, record 1 ...
    labels[7] = 0  # ... and record 2
    paths = shard_writer(str(tmp_path), images, labels, num_shards=3, num_classes=9)
    with open(paths[2], "r+b") as f:  # shard 2: its last record cut short
        f.truncate(os.path.getsize(paths[2]) - 5)
    first = diagnose.find_bad_record(paths, 9)
    assert (first.file, first.index) == (paths[0], 2) and "stored 0" in first.reason
    second = diagnose.find_bad_record(paths[1:], 9)
    assert (second.file, second.index) == (paths[1], 1) and "JPEG" in second.reason
    last_first = diagnose.find_bad_record(paths[::-1], 9)
    assert (last_first.file, last_first.index) == (paths[2], 2)
    assert "truncated" in last_first.reason
    assert diagnose.count_bad_records(paths, 9) == 4
    assert [diagnose.count_bad_records([p], 9) for p in paths] == [1, 2, 1]
    # The label offset decides which labels are bad: stored 0..9 are fine for 10 classes.
    assert diagnose.find_bad_record(paths[:1], 10, label_offset=0) is None


def test_missing_file(tmp_path):
    missing = str(tmp_path / "train-00000-of-00001")
    bad = diagnose.find_bad_record([missing], NUM)
    assert bad.index is None and str(bad) == f"{missing}: file not found"
    assert diagnose.count_bad_records([missing], NUM) == 1


def test_works_from_inside_a_graph_context(tmp_path, shard_writer, jpeg_encoder):
    # The session loop calls it while its training graph is the default graph.
    paths, _ = _build(str(tmp_path), shard_writer, jpeg_encoder, "label_zero")
    with tf.Graph().as_default():
        assert not tf.executing_eagerly()
        bad = diagnose.find_bad_record(paths, NUM)
        assert diagnose.count_bad_records(paths, NUM) == 1
    assert (bad.file, bad.index) == (paths[1], 2)


def _tfds_record(jpeg: bytes, label: int) -> bytes:
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_other_record_formats_through_split_parse(tmp_path, jpeg_encoder):
    # TFDS records: "image" and a 0-based "label"; the split's own parser reads them.
    jpeg = jpeg_encoder(np.full((20, 20, 3), 90, np.uint8))
    path = str(tmp_path / "imagenet2012-train.tfrecord-00000-of-00001")
    with tf.io.TFRecordWriter(path) as writer:
        for label in (0, 3, 4, 1):
            writer.write(_tfds_record(jpeg, label))
    split = pipeline.Split("train", (path,), (4,), parse=schema.parse_tfds)
    bad = diagnose.find_bad_record([path], 4, parse=split.parse)
    assert str(bad) == f"{path}: record 2: label 4 is outside [0, 4)"
    assert diagnose.find_bad_record([path], 5, parse=split.parse) is None
    # Read as TF-slim records they have no image/encoded: said so, not a misleading label.
    slim = diagnose.find_bad_record([path], 5)
    assert (slim.index, slim.reason) == (0, "no image bytes (image/encoded is missing or empty)")


# ---------------------------------------------------------------- the command


def _diagnose_cli(*args) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "vgg_keras.data.diagnose", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def _data_folder(folder: str, shard_writer, jpeg_encoder, broken: bool) -> dict[str, list[str]]:
    """train: 12 records (labels 1..12) in 2 shards; validation: 4 in 1.  ``broken``: train
    shard 0's record 1 is not a JPEG, shard 1's record 2 has label 13 of 12 classes, and the
    validation shard is cut in its record 2 (dataset_info.json still says 4)."""
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (24, 24, 3), dtype=np.uint8) for _ in range(NUM)]
    labels = list(range(1, NUM + 1))
    if broken:
        images[2] = b"these bytes are not a JPEG"  # shard 0, record 1
        labels[5] = NUM + 1  # shard 1, record 2
    train = shard_writer(folder, images, labels, num_shards=2, num_classes=NUM)
    val = shard_writer(folder, images[:4], [1, 2, 3, 4], split="validation", num_classes=NUM)
    if broken:
        with open(val[0], "r+b") as f:
            f.truncate(_record_offsets(val[0])[2] + 30)
    return {"train": train, "validation": val}


def test_command_on_a_clean_folder(tmp_path, shard_writer, jpeg_encoder):
    _data_folder(str(tmp_path), shard_writer, jpeg_encoder, broken=False)
    proc = _diagnose_cli(tmp_path)
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    assert proc.stdout.splitlines() == [
        "train: 12 records in 2 files, 0 bad",
        "validation: 4 records in 1 files, 0 bad",
        f"{tmp_path}: all 16 records are usable",
    ]


def test_command_names_the_first_bad_record_of_each_file(tmp_path, shard_writer, jpeg_encoder):
    paths = _data_folder(str(tmp_path), shard_writer, jpeg_encoder, broken=True)
    proc = _diagnose_cli(tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    # one line on stderr (no libjpeg complaints about the record that is not a JPEG)
    assert proc.stderr == f"error: {tmp_path}: 4 bad record(s) in 3 of 3 files\n"
    lines = proc.stdout.splitlines()
    assert lines[0] == (
        f"{paths['train'][0]}: record 1: image/encoded (26 bytes) is not a decodable JPEG image "
        "(1 bad of 6 in this file)"
    )
    assert lines[1] == (
        f"{paths['train'][1]}: record 2: label 12 (stored 13 minus label_offset 1) is outside "
        "[0, 12) (1 bad of 6 in this file)"
    )
    assert lines[2] == "train: 12 records in 2 files, 2 bad"
    # the cut validation shard: its records 2 and 3 are lost
    assert re.fullmatch(
        re.escape(f"{paths['validation'][0]}: record 2: truncated or corrupt record (")
        + ".*"
        + re.escape(") (2 bad of 4 in this file)"),
        lines[3],
    ), lines[3]
    assert lines[4:] == ["validation: 4 records in 1 files, 2 bad"]


def test_command_without_dataset_info(tmp_path, shard_writer, jpeg_encoder, capsys):
    paths = _data_folder(str(tmp_path), shard_writer, jpeg_encoder, broken=True)
    os.remove(tmp_path / info.INFO_FILE)
    os.remove(paths["validation"][0])
    # labels are checked against --num_classes; without it, only for >= 0
    assert run_cli(diagnose.main, [str(tmp_path), "--num_classes", "12"]) == 2
    out, err = capsys.readouterr()
    assert "label 12 (stored 13" in out and "train: 12 records in 2 files, 2 bad" in out
    assert err == f"error: {tmp_path}: 2 bad record(s) in 2 of 2 files\n"
    assert run_cli(diagnose.main, [str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out.startswith("note: labels checked for >= 0 only") and "label 12" not in out
    assert err == f"error: {tmp_path}: 1 bad record(s) in 1 of 2 files\n"


@pytest.mark.parametrize("case", ["missing", "empty", "wrong_types", "not_an_object"])
def test_command_refuses_in_one_line(tmp_path, capsys, case):
    folder = tmp_path / "data"
    if case != "missing":
        folder.mkdir()
    if case == "wrong_types":
        (folder / info.INFO_FILE).write_text(json.dumps({"num_classes": "10", "files": 5}))
    if case == "not_an_object":
        (folder / info.INFO_FILE).write_text("[]")
    assert run_cli(diagnose.main, [str(folder)]) == 2
    err = capsys.readouterr().err
    expected = {
        "missing": f"error: data folder not found: {folder}",
        "empty": f"error: no train-* or validation-* TFRecord files in {folder}",
        "wrong_types": f"error: {folder / info.INFO_FILE}: num_classes must be an integer >= 1",
        "not_an_object": f"error: {folder / info.INFO_FILE}: unreadable dataset info (expected a mapping",
    }[case]
    assert err.startswith(expected) and err.count("\n") == 1, err


def test_command_help(capsys):
    with pytest.raises(SystemExit) as done:
        diagnose.main(["--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("usage: python -m vgg_keras.data.diagnose")


@pytest.mark.skipif(
    compat.TF1,
    reason="TF 1.15's extension-module init swallows a KeyboardInterrupt raised inside it, "
    "before the command has code of its own running (its import completes, the Ctrl-C is lost)",
)
def test_ctrl_c_while_tensorflow_loads(tmp_path):
    command = [sys.executable, "-m", "vgg_keras.data.diagnose", str(tmp_path)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:  # TensorFlow's library is mapped: its import has begun and lasts seconds
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            with open(f"/proc/{proc.pid}/maps") as f:
                if "libtensorflow" in f.read():
                    break
            time.sleep(0.002)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert (proc.returncode, stderr) == (130, "interrupted\n"), stderr


def test_command_names_a_shard_of_another_count_or_size(
    tmp_path, shard_writer, jpeg_encoder, capsys
):
    """A shard longer than listed, and one whose size is not the listed one: exit 2, naming it."""
    files = _data_folder(str(tmp_path), shard_writer, jpeg_encoder, broken=False)
    meta = json.loads((tmp_path / info.INFO_FILE).read_text())
    shard = files["train"][0]
    name, size = os.path.basename(shard), os.path.getsize(shard)
    for key, change in (("files", -1), ("bytes", 1)):
        meta[key][name] += change
        (tmp_path / info.INFO_FILE).write_text(json.dumps(meta))
        assert run_cli(diagnose.main, [str(tmp_path)]) == 2
        out = capsys.readouterr().out
        meta[key][name] -= change
        if key == "files":
            assert f"{shard}: 6 records, its dataset lists 5: not the shard" in out, out
        else:
            assert f"{shard}: {size} bytes, {info.INFO_FILE} lists {size + 1}: not the" in out, out
