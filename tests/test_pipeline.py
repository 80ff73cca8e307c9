"""Input pipelines: exact eval coverage, train batch shapes, worker sharding, exact resume,
split loading with its counts cache, bad-folder messages, synthetic data.

Records carry unique labels, so a label identifies its record.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from vgg_keras import compat, config
from vgg_keras.compat import tf
from vgg_keras.data import info, pipeline, preprocess, schema
from vgg_keras.errors import UsageError

SIZE = 32


def _write(directory, shard_writer, count, num_shards, split="train", with_info=True):
    """``count`` random images with stored labels 1..count; returns the directory."""
    rng = np.random.default_rng(count * 100 + num_shards)
    images = [rng.integers(0, 256, (36, 44, 3), dtype=np.uint8) for _ in range(count)]
    shard_writer(
        str(directory),
        images,
        range(1, count + 1),
        split=split,
        num_shards=num_shards,
        num_classes=count,
        with_info=with_info,
    )
    return str(directory)


@pytest.fixture(scope="module")
def data23(tmp_path_factory, shard_writer):
    """23 train and 23 validation records (labels 0..22) in 3 shards each."""
    directory = tmp_path_factory.mktemp("data23")
    _write(directory, shard_writer, 23, 3, "train")
    _write(directory, shard_writer, 23, 3, "validation")
    return str(directory)


def _parts(data_dir: str, classes: int = 23, **settings):
    """(Network, Input) of ``data_dir``'s records at SIZE pixels (the ImageNet recipe else)."""
    values = {"data_dir": data_dir, "class_num": classes, "image_size": SIZE, **settings}
    c = config.resolve(settings=values, need_data=False)
    return c.network, c.input


def _split(data_dir: str, split: str) -> pipeline.Split:
    return pipeline.load_split(_parts(data_dir)[1], split)


def _eval(split: pipeline.Split, batch_size: int, classes: int = 23, **kwargs):
    network, inp = _parts(os.path.dirname(split.files[0]), classes)
    return pipeline.eval_dataset(split, network, inp, batch_size, **kwargs)


def _train(split: pipeline.Split, batch_size: int, classes=23, seed=0, shuffle=10000, **kwargs):
    network, inp = _parts(
        os.path.dirname(split.files[0]), classes, batch_size=batch_size, shuffle_buffer=shuffle
    )
    return pipeline.train_dataset(split, network, inp, seed, **kwargs)


def _labels(ds) -> list[int]:
    return [int(y) for _, labels in ds for y in labels.numpy()]


@pytest.mark.parametrize("batch_size", [4, 5, 7, 23, 50])
def test_eval_sees_every_image_exactly_once(data23, batch_size):
    split = _split(data23, "validation")
    ds = _eval(split, batch_size)
    sizes = [int(x.shape[0]) for x, _ in ds]
    assert sizes == [batch_size] * (23 // batch_size) + (
        [23 % batch_size] if 23 % batch_size else []
    )
    assert sorted(_labels(ds)) == list(range(23))


def test_eval_batches_shape_and_dtype(data23):
    ds = _eval(_split(data23, "validation"), 8)
    images, labels = next(iter(ds))
    assert images.shape == (8, SIZE, SIZE, 3) and images.dtype == tf.float32
    assert labels.shape == (8,) and labels.dtype == tf.int32


def test_train_batches_are_full_across_epochs(data23):
    split = _split(data23, "train")
    ds = _train(split, 8, shuffle=64)
    images_spec, labels_spec = ds.element_spec
    assert images_spec.shape == (8, SIZE, SIZE, 3) and images_spec.dtype == tf.float32
    assert labels_spec.shape == (8,) and labels_spec.dtype == tf.int32
    batches = list(ds.take(6))  # 48 images: more than two epochs of 23
    assert all(tuple(x.shape) == (8, SIZE, SIZE, 3) for x, _ in batches)
    labels = [int(y) for _, ys in batches for y in ys.numpy()]
    # Epoch by epoch, every record once.
    assert sorted(labels[:23]) == list(range(23)) and sorted(labels[23:46]) == list(range(23))
    assert labels[:23] != labels[23:46], "each epoch is shuffled differently"


def test_train_stream_runs_without_the_autotuner(data23):
    """Destroying an iterator waits for the autotuner's sleeping thread: closing the session
    after the demo's 20 epochs waited up to a minute."""
    options = _train(_split(data23, "train"), 8).options()
    if compat.TF1:
        assert options.experimental_optimization.autotune is False
    else:
        assert options.autotune.enabled is False


def test_train_needs_at_least_one_batch(data23):
    split = _split(data23, "train")
    with pytest.raises(UsageError, match=f"{data23}: 23 training records"):
        _train(split, 24)


@pytest.mark.parametrize(
    "num_files,num_workers,by_record",
    [(4, 2, False), (5, 2, False), (3, 4, True), (2, 3, True)],
)
def test_sharding_is_disjoint_and_complete(
    tmp_path, shard_writer, num_files, num_workers, by_record
):
    total = 17
    directory = _write(tmp_path, shard_writer, total, num_files, "validation")
    split = _split(directory, "validation")
    assert split.counts == tuple(len(range(i, total, num_files)) for i in range(num_files))
    train_seen, eval_seen = [], []
    for worker in range(num_workers):
        files, record_sharded, epoch_size = split.for_worker(num_workers, worker)
        assert record_sharded is by_record
        eval_labels = _labels(_eval(split, 4, total, num_workers=num_workers, worker_index=worker))
        assert len(eval_labels) == epoch_size
        eval_seen += eval_labels
        # Training: one epoch of this worker is epoch_size batches of one.
        train_ds = _train(split, 1, total, num_workers=num_workers, worker_index=worker)
        train_labels = _labels(train_ds.take(epoch_size))
        assert len(set(train_labels)) == epoch_size
        train_seen += train_labels
    # Every record exactly once over all workers, in eval and in each training epoch.
    assert sorted(eval_seen) == list(range(total))
    assert sorted(train_seen) == list(range(total))


def test_for_worker_single_worker_reads_everything(data23):
    split = _split(data23, "train")
    assert split.for_worker(1, 0) == (split.files, False, 23)


def _stream(split, start_step, steps, seed=0, **kwargs):
    ds = _train(split, 8, seed=seed, start_step=start_step, shuffle=64, **kwargs)
    return [(x.numpy(), y.numpy()) for x, y in ds.take(steps)]


def test_resume_continues_the_uninterrupted_stream_exactly(data23):
    # 23 records, batches of 8: resuming at step 2 starts mid-batch-straddling epoch 0, at 3
    # one record into epoch 1, at 6 two records into epoch 2; batch 5 straddles epochs 1/2.
    split = _split(data23, "train")
    full = _stream(split, 0, 8, seed=5)
    for start in (2, 3, 6):
        resumed = _stream(split, start, 8 - start, seed=5)
        for step, (expected, got) in enumerate(zip(full[start:], resumed), start=start):
            np.testing.assert_array_equal(got[1], expected[1], err_msg=f"labels at {step}")
            np.testing.assert_array_equal(got[0], expected[0], err_msg=f"images at {step}")
    # Not trivially equal: the stream moves on, and the seed changes it.
    assert not np.array_equal(full[0][1], full[1][1])
    assert not np.array_equal(_stream(split, 0, 1, seed=6)[0][1], full[0][1])


def test_resume_with_record_sharding(data23):
    split = _split(data23, "train")
    kwargs = {"num_workers": 4, "worker_index": 1}
    assert split.for_worker(4, 1)[1], "3 files for 4 workers: sharded by record"
    ds = _train(split, 2, shuffle=64, **kwargs)
    full = [y.numpy() for _, y in ds.take(7)]
    resumed = _train(split, 2, shuffle=64, start_step=4, **kwargs)
    for expected, (_, got) in zip(full[4:], resumed.take(3)):
        np.testing.assert_array_equal(got.numpy(), expected)


@pytest.mark.parametrize("skip_corrupt", [False, True])
def test_each_training_image_is_train_image_of_its_record_and_place(
    tmp_path, shard_writer, skip_corrupt
):
    """The crop windows are drawn a chunk at a time, for records with 0-3 boxes and their own
    sizes side by side: each image is still preprocess.train_image of its record, seeded by
    its place in the epoch."""
    rng = np.random.default_rng(5)
    count, seed = 24, 3
    images = [
        rng.integers(0, 256, (*rng.integers(20, 70, 2), 3), dtype=np.uint8) for _ in range(count)
    ]
    boxes = [
        [(x, y, x + 0.3, y + 0.4) for x, y in rng.uniform(0, 0.6, (n, 2))]
        for n in rng.integers(0, 4, count)
    ]
    shard_writer(str(tmp_path), images, range(1, count + 1), num_shards=2, bboxes=boxes)
    network, inp = _parts(
        str(tmp_path), count, batch_size=6, min_object_covered=0.3, skip_corrupt=skip_corrupt
    )
    split = pipeline.load_split(inp, "train")
    got = list(pipeline.train_dataset(split, network, inp, seed).take(count // 6))
    records = {}
    for serialized in tf.data.TFRecordDataset(list(split.files)):
        jpeg, label, bboxes = schema.parse(serialized)
        records[int(label)] = (jpeg, bboxes)
    place = 0
    for batch_images, batch_labels in got:
        for image, label in zip(batch_images.numpy(), batch_labels.numpy()):
            jpeg, bboxes = records[int(label)]
            place_seed = tf.constant([seed, place], tf.int64)  # epoch 0
            expected = preprocess.train_image(jpeg, bboxes, place_seed, network, inp)
            np.testing.assert_array_equal(image, expected.numpy(), err_msg=f"place {place}")
            place += 1
    assert sorted(records) == sorted(int(y) for _, ys in got for y in ys.numpy())


def test_load_split_counts_from_dataset_info(tmp_path, shard_writer):
    directory = _write(tmp_path, shard_writer, 10, 3)
    with open(os.path.join(directory, "dataset_info.json")) as f:
        meta = json.load(f)
    # dataset_info.json is trusted (no counting): change a count there and it shows.
    meta["files"]["train-00000-of-00003"] = 99
    with open(os.path.join(directory, "dataset_info.json"), "w") as f:
        json.dump(meta, f)
    split = _split(directory, "train")
    assert split.counts == (99, 3, 3)
    assert not os.path.exists(os.path.join(directory, info.COUNTS_CACHE))


def test_load_split_counts_once_and_caches(tmp_path, shard_writer, jpeg_encoder):
    directory = _write(tmp_path, shard_writer, 10, 3, with_info=False)
    split = _split(directory, "train")
    assert split.name == "train" and split.counts == (4, 3, 3) and split.num_examples == 10
    assert [os.path.basename(f) for f in split.files] == [
        f"train-0000{i}-of-00003" for i in range(3)
    ]
    cache_path = os.path.join(directory, info.COUNTS_CACHE)
    with open(cache_path) as f:
        cache = json.load(f)
    first = os.path.join(directory, "train-00000-of-00003")
    assert cache["train-00000-of-00003"] == {"bytes": os.path.getsize(first), "records": 4}
    # The cache is read: a (fake) count there is believed while the file size matches ...
    cache["train-00000-of-00003"]["records"] = 1234
    with open(cache_path, "w") as f:
        json.dump(cache, f)
    assert _split(directory, "train").counts == (1234, 3, 3)
    # ... and a file whose size changed is counted again.
    with tf.io.TFRecordWriter(first + ".extra") as writer:
        writer.write(b"one more record")
    with open(first, "ab") as out, open(first + ".extra", "rb") as extra:
        out.write(extra.read())
    os.remove(first + ".extra")
    assert _split(directory, "train").counts == (5, 3, 3)


def test_missing_folder_is_a_usage_error(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(UsageError, match=f"data folder not found: {missing}"):
        _split(missing, "train")


def test_folder_without_train_files_is_a_usage_error(tmp_path, shard_writer):
    directory = _write(tmp_path, shard_writer, 4, 1, "validation")
    with pytest.raises(UsageError, match=f"no train-\\* TFRecord files in {directory}"):
        _split(directory, "train")
    assert _split(directory, "validation").counts == (4,)


def test_truncated_file_is_a_usage_error_naming_it(tmp_path, shard_writer):
    directory = _write(tmp_path, shard_writer, 6, 2, with_info=False)
    broken = os.path.join(directory, "train-00001-of-00002")
    with open(broken, "r+b") as f:
        f.truncate(os.path.getsize(broken) - 100)
    with pytest.raises(UsageError, match=f"{broken}: truncated or corrupt"):
        _split(directory, "train")


def test_synthetic_dataset_shapes_and_labels():
    network, _ = _parts("unused", classes=10)
    ds = pipeline.synthetic_dataset(network, 6, seed=3)
    (x1, y1), (x2, y2) = list(ds.take(2))
    assert x1.shape == (6, SIZE, SIZE, 3) and x1.dtype == tf.float32
    assert y1.shape == (6,) and y1.dtype == tf.int32
    assert ((y1.numpy() >= 0) & (y1.numpy() < 10)).all()
    np.testing.assert_array_equal(x1.numpy(), x2.numpy())  # one fixed batch, repeated
    np.testing.assert_array_equal(y1.numpy(), y2.numpy())
    assert 0.5 < float(tf.math.reduce_std(x1)) < 1.5


def test_a_shard_of_another_size_is_refused_at_the_start(tmp_path, shard_writer):
    """Another dataset's shard of the same record count in place of a listed one: its size
    tells (unless --skip_corrupt, which reads what is there); a dataset without sizes passes."""
    directory = _write(tmp_path / "data", shard_writer, 6, 2)
    other = _write(tmp_path / "other", shard_writer, 8, 2)  # 4 records a shard, as here ...
    replaced = os.path.join(directory, "train-00001-of-00002")
    shutil.copyfile(os.path.join(other, "train-00001-of-00002"), replaced)
    meta = info.read_info(directory)
    meta["files"]["train-00001-of-00002"] = 4  # ... as the manifest says (sizes tell them apart)
    with open(os.path.join(directory, info.INFO_FILE), "w") as f:
        json.dump({**meta, "bytes": {"train-00001-of-00002": 1}}, f)
    size = os.path.getsize(replaced)
    with pytest.raises(UsageError) as raised:
        _split(directory, "train")
    assert str(raised.value).startswith(f"{replaced}: {size} bytes, dataset_info.json lists 1: ")
    assert pipeline.load_split(_parts(directory, skip_corrupt=True)[1], "train").counts == (3, 4)
    del meta["bytes"]
    with open(os.path.join(directory, info.INFO_FILE), "w") as f:
        json.dump(meta, f)  # written before sizes were listed
    assert _split(directory, "train").counts == (3, 4)


@pytest.mark.parametrize("listed", [2, 5], ids=["longer", "shorter"])
def test_a_shard_holding_another_count_stops_both_pipelines(tmp_path, shard_writer, listed):
    """A shard holding more or fewer records than listed: both pipelines stop as they read it,
    and diagnose.explain names it in one line."""
    from vgg_keras.tools import diagnose

    directory = _write(tmp_path, shard_writer, 6, 2)
    split = _split(directory, "train")
    split = pipeline.Split("train", split.files, (3, listed))
    for ds in (_eval(split, 2, classes=6), _train(split, 2, classes=6)):
        with pytest.raises(tf.errors.InvalidArgumentError) as raised:
            list(ds.take(10))
        explained = diagnose.explain(raised.value, split, 6)
        assert str(explained) == (
            f"{split.files[1]}: 3 records, its dataset lists {listed}: not the shard that was written"
        )
