"""Input pipelines: TFRecord shards -> (images, labels) batches; synthetic data; exact sizes.

The training stream is a deterministic function of (files, seed, worker): epoch ``e`` shuffles
the files and the records with seeds derived from ``e``, and every record carries its own
augmentation seed.  A run resumed at global step ``s`` therefore starts the stream at epoch
``s * batch // epoch_size`` and skips only the remainder of that epoch, and sees exactly the
batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from collections.abc import Callable

from vgg_keras import atomic, compat, cores, documents, storage
from vgg_keras.compat import tf
from vgg_keras.config import Input, Network
from vgg_keras.data import info, preprocess, schema, tfds_source
from vgg_keras.errors import UsageError

AUTOTUNE = tf.data.experimental.AUTOTUNE
# Both streams run without tf.data's autotuner (compat.without_autotune, on the outermost dataset:
# here for training, in distribute.pad_batches for evaluation; the strategies' per-device
# datasets in Distribution.input_iterator), whose thread a session's close waits up to a minute
# for.  AUTOTUNE would then mean at most 16 decoding calls: one call per core the process may
# use (cores.usable) keeps a large machine's cores decoding.

# tf.data's functions are traced as written: their control flow is TensorFlow's already, and
# AutoGraph's rewriting of their source would cost seconds of every start.  Wrapping the
# outermost function is enough: the datasets traced inside it are left as written too.
as_written = tf.autograph.experimental.do_not_convert
CHECKED_CHUNK = 32  # records a shard's count check covers at once (_shard_records)
PREPARED_TOGETHER = 32  # training records one call of the input's preparation takes


@dataclasses.dataclass(frozen=True)
class Split:
    """The shards of one split, their exact record counts, and how to parse a record.

    ``parse(serialized, label_offset)`` gives (jpeg, 0-based label, bboxes): ``schema.parse``
    for the TF-slim ImageNet schema, ``schema.parse_tfds`` for a TFDS-prepared set;
    ``parse_many`` the same of a vector of records (``schema.parse_many``' layout).
    """

    name: str
    files: tuple[str, ...]
    counts: tuple[int, ...]
    parse: Callable = schema.parse
    parse_many: Callable = schema.parse_many

    @property
    def num_examples(self) -> int:
        return sum(self.counts)

    def for_worker(self, num_workers: int, worker_index: int) -> tuple[tuple[str, ...], bool, int]:
        """(files this worker reads, whether it shards by record, its records per epoch).

        Files are divided among workers when there are at least as many files as workers;
        otherwise every worker reads all files and keeps every ``num_workers``-th record.
        """
        if len(self.files) >= num_workers:
            idx = range(worker_index, len(self.files), num_workers)
            return tuple(self.files[i] for i in idx), False, sum(self.counts[i] for i in idx)
        return self.files, True, len(range(worker_index, self.num_examples, num_workers))


def list_files(data_dir: str, split: str) -> list[str]:
    """Sorted shard paths of ``split`` ('train' or 'validation') in ``data_dir``.

    Exactly the shards dataset_info.json lists, when it lists any of this split; otherwise
    the files named ``<prefix>-NNNNN-of-NNNNN``.  Anything else that starts with the prefix (a
    ``.bak`` or ``(copy)`` of a shard would silently double its images) is left out, with a
    note on stderr naming it.
    """
    if not storage.isdir(data_dir):
        raise UsageError(f"data folder not found: {data_dir}")
    prefix = schema.SPLIT_PREFIXES[split]
    present = sorted(storage.listdir(data_dir))
    listed = sorted(n for n in info.read_info(data_dir).get("files", {}) if n.startswith(prefix))
    if listed:
        missing = [n for n in listed if n not in present]
        if len(missing) == len(listed):
            raise UsageError(f"no {prefix}-* TFRecord files in {data_dir}")
        if missing:
            raise UsageError(
                f"{os.path.join(data_dir, missing[0])}: listed in {info.INFO_FILE} but missing "
                f"({len(missing)} of {len(listed)} {prefix} shards)"
            )
        names = listed
    else:
        names = [n for n in present if n.startswith(prefix) and info.SHARD_NAME.fullmatch(n)]
    ignored = [n for n in present if n.startswith(prefix + "-") and n not in names]
    if ignored and names:
        why = f"not listed in {info.INFO_FILE}" if listed else f"not named {prefix}-NNNNN-of-NNNNN"
        more = f" and {len(ignored) - 3} more" if len(ignored) > 3 else ""
        print(f"note: {data_dir}: ignored {', '.join(ignored[:3])}{more} ({why})", file=sys.stderr)
    if not names:
        also = f" (ignored {', '.join(ignored[:3])})" if ignored else ""
        raise UsageError(f"no {prefix}-* TFRecord files in {data_dir}{also}")
    return [os.path.join(data_dir, n) for n in names]


def count_records(path: str, skip_corrupt: bool = False) -> int:
    """Exact number of records in one TFRecord file (a truncated file is a UsageError; with
    ``skip_corrupt``, the records before its break)."""
    dataset = tf.data.TFRecordDataset(path)
    if skip_corrupt:
        dataset = compat.ignore_errors(dataset)
    try:
        return int(dataset.reduce(0, lambda n, _: n + 1))
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as err:
        raise UsageError(
            f"{path}: truncated or corrupt TFRecord file (use --skip_corrupt to skip bad records)"
        ) from err


def load_split(inp: Input, split: str) -> Split:
    """The files of ``split`` with exact counts: from dataset_info.json, else counted once.

    A shard whose size is not the one dataset_info.json lists is a UsageError (unless
    --skip_corrupt: its bad records are skipped as it is read).  Counting reads every record
    once; the result is cached beside the data when the folder is writable, keyed by file size
    so a changed shard is counted again.  ``tfds:NAME[:SPLIT]`` names a TFDS-prepared dataset in
    ``tfds_data_dir`` instead of a folder.
    """
    data_dir, skip_corrupt = inp.data_dir, inp.skip_corrupt
    if data_dir.startswith(tfds_source.PREFIX):
        files, counts = tfds_source.locate(data_dir, split, inp.tfds_data_dir)
        return Split(split, files, counts, schema.parse_tfds, schema.parse_tfds_many)
    files = list_files(data_dir, split)
    if not skip_corrupt:
        info.check_sizes(data_dir, files)
    known = info.read_info(data_dir).get("files", {})
    cache_path = os.path.join(data_dir, info.COUNTS_CACHE)
    try:
        cache = documents.read_json(cache_path, "record counts")
    except UsageError:
        cache = {}  # damaged (read_json gives a dict or refuses): counted again
    counts, changed = [], False
    for path in files:
        name, size = os.path.basename(path), storage.getsize(path)
        if name in known:
            counts.append(int(known[name]))
            continue
        entry = cache.get(name)
        if not isinstance(entry, dict) or entry.get("bytes") != size:
            try:
                entry = {"bytes": size, "records": count_records(path)}
            except UsageError:
                if not skip_corrupt:
                    raise
                counts.append(count_records(path, skip_corrupt=True))  # not cached: damaged
                continue
            cache[name], changed = entry, True
        counts.append(int(entry["records"]))
    if changed:
        try:
            atomic.write_text(cache_path, json.dumps(cache, indent=1, sort_keys=True))
        except OSError:
            pass  # a read-only data folder: count again next time
    return Split(split, tuple(files), tuple(counts))


def needed_classes(data_dir: str, label_offset: int) -> int | None:
    """The classes a dataset's labels need: dataset_info.json's num_classes, shifted when
    --label_offset differs from the file's; None when the folder does not say."""
    if data_dir.startswith(tfds_source.PREFIX) or not storage.isdir(data_dir):
        return None
    meta = info.read_info(data_dir)
    if not isinstance(meta.get("num_classes"), int):
        return None
    return meta["num_classes"] + int(meta.get("label_offset", 1)) - label_offset


def _shard_records(path, count):
    """The records of one shard, and an InvalidArgumentError when it holds more or fewer than
    ``count`` (its dataset's), so that a shard that changed since it was listed stops the run
    (diagnose.explain names it).  Records are checked a chunk at a time (a check per record
    cost more than the rest of a small image's preprocessing), and each chunk leaves one chunk
    late, after the check of the next (or of the file's end): a reader that takes exactly
    ``count`` records checks too."""
    chunks = tf.data.TFRecordDataset(path).batch(CHECKED_CHUNK).map(lambda chunk: (chunk, True))
    end = tf.data.Dataset.from_tensors((tf.zeros([0], tf.string), False))

    def check(state, element):
        read, previous = state
        chunk, real = element
        read += tf.size(chunk, out_type=tf.int64)
        ok = tf.where(real, read <= count, tf.equal(read, count))
        message = [path, ": not the record count its dataset lists:", count]
        with tf.control_dependencies([tf.debugging.Assert(ok, message)]):
            return (read, (chunk, real)), tuple(tf.identity(t) for t in previous)

    start = (tf.constant(0, tf.int64), (tf.zeros([0], tf.string), tf.constant(False)))
    checked = chunks.concatenate(end).apply(tf.data.experimental.scan(start, check))
    # Filtered inside the file's dataset: an interleave of files sees the same records as before.
    return checked.filter(lambda _, real: real).map(lambda chunk, _: chunk).unbatch()


def _reader(inp: Input) -> Callable:
    """(path, count) -> the shard's records: checked, or as they are with --skip_corrupt (which
    takes what a damaged shard still holds)."""
    reader = (lambda path, _: tf.data.TFRecordDataset(path)) if inp.skip_corrupt else _shard_records
    return as_written(reader)


def _files_and_counts(split: Split, files) -> tuple[tf.Tensor, tf.Tensor]:
    """(path, record count) of ``files``, a worker's share of ``split``."""
    counts = dict(zip(split.files, split.counts))
    return tf.constant(list(files)), tf.constant([counts[f] for f in files], tf.int64)


def _check_label(label, num_classes: int):
    with tf.control_dependencies(
        [
            tf.debugging.assert_greater_equal(label, 0, message="label below range"),
            tf.debugging.assert_less(label, num_classes, message="label above range"),
        ]
    ):
        return tf.identity(label)


def check_one_batch(split: Split, batch_size: int, num_workers: int, worker_index: int):
    """``split.for_worker(...)``, refused with the remedy when it holds less than one batch of
    ``batch_size`` (--batch_size x --accumulation_steps)."""
    files, by_record, epoch_size = split.for_worker(num_workers, worker_index)
    if epoch_size < batch_size:
        raise UsageError(
            f"{os.path.dirname(files[0])}: {epoch_size} training records per worker, fewer than "
            f"one batch of {batch_size}: give a smaller --batch_size (or fewer "
            '--accumulation_steps), e.g. make train DATA=... ARGS="--batch_size 16"'
        )
    return files, by_record, epoch_size


def _prepare_chunk(serialized, epochs, indexes, *, split, network, inp, seed):
    """A chunk of (record, epoch, place) -> (images, labels): each image is its record's
    ``preprocess.train_image`` with its place's seed.  The records are parsed together,
    located in turn (a JPEG's shape, its boxes, its uniforms), their windows drawn together,
    and cropped in turn."""
    jpegs, labels, bboxes, counts = split.parse_many(serialized, inp.label_offset)
    seeds = tf.stack([epochs * 1_000_003 + seed, indexes], axis=1)
    rows = tf.maximum(tf.shape(bboxes)[1], 1)  # every record's boxes, zero-padded to as many

    def locate_record(record):
        jpeg, boxes, count, record_seed = record
        shape, boxes, uniforms, flip = preprocess.locate(jpeg, boxes[None, :count], record_seed)
        return shape, tf.pad(boxes, [[0, rows - tf.shape(boxes)[0]], [0, 0]]), uniforms, flip

    kinds = (tf.int32, tf.int32, tf.float32, tf.bool)
    located = compat.map_fn(locate_record, (jpegs, bboxes, counts, seeds), kinds)
    windows = preprocess.sample_crops(*located[:3], *preprocess.crop_ranges(inp))

    def crop_record(record):
        return preprocess.crop_flip_normalize(*record, network, inp.input_mode)

    images = compat.map_fn(crop_record, (jpegs, windows, located[3]), tf.float32)
    return images, _check_label(labels, network.class_num)


def train_dataset(
    split: Split,
    network: Network,
    inp: Input,
    seed: int,
    *,
    micro_batches: int = 1,
    start_step: int = 0,
    num_workers: int = 1,
    worker_index: int = 0,
) -> tf.data.Dataset:
    """Endless shuffled, augmented training batches of (float32 images, int32 labels) of one
    replica's optimizer step: ``micro_batches`` (--accumulation_steps) of --batch_size;
    ``start_step`` resumes the stream after that many batches."""
    batch_size = inp.batch_size * micro_batches
    files, by_record, epoch_size = check_one_batch(split, batch_size, num_workers, worker_index)
    consumed = start_step * batch_size
    first_epoch, offset = divmod(consumed, epoch_size)
    files_tensor, counts_tensor = _files_and_counts(split, files)

    def one_epoch(epoch):
        epoch_seed = tf.stack([tf.constant(seed, tf.int64), epoch])
        # A stateless permutation (TF 1.15 has no stateless_shuffle): sort by seeded uniforms.
        keys = tf.random.stateless_uniform([len(files)], seed=epoch_seed)
        order = tf.argsort(keys)
        shards = (tf.gather(files_tensor, order), tf.gather(counts_tensor, order))
        records = tf.data.Dataset.from_tensor_slices(shards).interleave(
            _reader(inp),
            cycle_length=min(8, len(files)),
            block_length=1,
            num_parallel_calls=AUTOTUNE if len(files) > 1 else None,
        )
        if by_record:
            records = records.shard(num_workers, worker_index)
        records = records.shuffle(inp.shuffle_buffer, seed=epoch * 7919 + seed + 1)
        # Each record with its epoch and its place in it: its augmentation's seed.
        places = (tf.data.Dataset.from_tensors(epoch).repeat(), tf.data.Dataset.range(2**62))
        return tf.data.Dataset.zip((records, *places))

    ds = tf.data.Dataset.range(first_epoch, 2**62).flat_map(as_written(one_epoch)).skip(offset)
    # A chunk of records a call: one call per record kept the convolutions' cores busier than
    # the calls' work.  With --skip_corrupt, a chunk of one: a bad record is skipped alone.
    together = 1 if inp.skip_corrupt else PREPARED_TOGETHER
    prepare = functools.partial(_prepare_chunk, split=split, network=network, inp=inp, seed=seed)
    ds = ds.batch(together, drop_remainder=True)
    ds = ds.map(as_written(prepare), num_parallel_calls=cores.usable())
    if inp.skip_corrupt:
        ds = compat.ignore_errors(ds)
    if batch_size != together:
        ds = ds.unbatch().batch(batch_size, drop_remainder=True)
    return compat.without_autotune(ds.prefetch(AUTOTUNE))


def eval_dataset(
    split: Split,
    network: Network,
    inp: Input,
    batch_size: int,
    *,
    crops: int = 1,
    num_workers: int = 1,
    worker_index: int = 0,
) -> tf.data.Dataset:
    """Every validation image exactly once, in file order, the last batch possibly smaller.

    ``crops=10`` gives each image as its ten crops (``preprocess.ten_crop_images``): batches
    of shape (batch, 10, size, size, 3).
    """
    files, by_record, _ = split.for_worker(num_workers, worker_index)
    ds = tf.data.Dataset.from_tensor_slices(_files_and_counts(split, files))
    ds = ds.flat_map(_reader(inp))
    if by_record:
        ds = ds.shard(num_workers, worker_index)

    def preprocess_record(serialized):
        jpeg, label, _ = split.parse(serialized, inp.label_offset)
        if crops == preprocess.TEN_CROPS:
            image = preprocess.ten_crop_images(jpeg, network, inp)
        else:
            image = preprocess.eval_image(jpeg, network, inp)
        return image, _check_label(label, network.class_num)

    ds = ds.map(as_written(preprocess_record), num_parallel_calls=cores.usable())
    if inp.skip_corrupt:
        ds = compat.ignore_errors(ds)
    return ds.batch(batch_size, drop_remainder=False).prefetch(AUTOTUNE)


def synthetic_dataset(network: Network, batch_size: int, seed: int):
    """One fixed random batch repeated forever: no input cost, the throughput upper bound."""
    image_size, num_classes = network.image_size, network.class_num
    images = tf.random.stateless_normal([batch_size, image_size, image_size, 3], seed=[seed, 1])
    labels = tf.random.stateless_uniform(
        [batch_size], seed=[seed, 2], minval=0, maxval=num_classes, dtype=tf.int32
    )
    return tf.data.Dataset.from_tensors((images, labels)).cache().repeat()
