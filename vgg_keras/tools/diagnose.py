"""Locate the record that broke an input pipeline, to name it in a one-line error.

When a tf.data iterator raises (a truncated shard, bytes that are not a JPEG, a label out of
range), TensorFlow's message rarely says which file and record.  ``find_bad_record`` rescans the
shards and names the first record the pipelines cannot use; ``count_bad_records`` counts them for
the ``--skip_corrupt`` report.

Each file is scanned by a tf.data pass that runs the checks the pipelines imply on every record
in parallel (traced once, reused for every file); only the first failing record is then re-read
eagerly, one check at a time, to word the reason.  The scan runs eagerly even when called from
inside a graph context (the session loop's), in a helper thread whose default is eager mode.

As a command, it checks a whole data folder (exit 0 when every record is usable, 2 if not):

    python -m vgg_keras.data.diagnose DATA_DIR [--num_classes N] [--label_offset K]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import os
import sys
from collections.abc import Callable, Sequence

from tqdm import tqdm

from vgg_keras import storage
from vgg_keras.cli import UsageParser  # errors become one line and exit code 2
from vgg_keras.errors import EXIT_SIGINT, UsageError, reason, run_cli

try:
    from vgg_keras import compat
    from vgg_keras.compat import tf
    from vgg_keras.data import info, schema
except KeyboardInterrupt:  # Ctrl-C while the command loads TensorFlow (seconds): no traceback
    run = getattr(getattr(sys.modules["__main__"], "__spec__", None), "name", __name__)
    if run not in ("__main__", "vgg_keras.tools.diagnose", "vgg_keras.data.diagnose"):
        raise
    print("interrupted", file=sys.stderr)
    sys.exit(EXIT_SIGINT)

AUTOTUNE = tf.data.experimental.AUTOTUNE

# (serialized, label_offset) -> (jpeg bytes, 0-based label, (1, n, 4) boxes); Split.parse fits.
Parser = Callable


@dataclasses.dataclass(frozen=True)
class BadRecord:
    """The first unusable record: its file, its 0-based index in that file, and why."""

    file: str
    index: int | None  # None when the file cannot be opened at all
    reason: str

    def __str__(self) -> str:
        """``<file>: record <i>: <reason>``, the line a UsageError carries."""
        record = "" if self.index is None else f"record {self.index}: "
        return f"{self.file}: {record}{self.reason}"

    message = property(__str__)


def find_bad_record(
    files: Sequence[str],
    num_classes: int,
    label_offset: int = 1,
    parse: Parser = schema.parse,
    expected: Sequence[int] | None = None,
) -> BadRecord | None:
    """The first record in ``files`` (in order) that the pipelines cannot use, or None; with
    ``expected`` (each file's record count), also the first file holding another count.

    ``parse`` reads one record; pass ``Split.parse`` for splits not in the TF-slim schema.
    """

    scans = _scans(files, num_classes, label_offset, parse, expected)
    return _eagerly(lambda: next((first for _, _, first in scans if first is not None), None))


def explain(err: Exception, split, num_classes: int, label_offset: int = 1) -> Exception:
    """A one-line UsageError naming the record or shard of ``split`` (a pipeline.Split) behind
    ``err``, an input pipeline's TensorFlow error; ``err`` itself when none is to blame."""
    files, counts = list(split.files), list(split.counts)
    bad = find_bad_record(files, num_classes, label_offset, split.parse, counts)
    if bad is None:
        return err
    hint = " (use --skip_corrupt to skip bad records)" if bad.index is not None else ""
    return UsageError(f"{bad}{hint}")


def count_bad_records(
    files: Sequence[str],
    num_classes: int,
    label_offset: int = 1,
    parse: Parser = schema.parse,
    expected: Sequence[int] | None = None,
) -> int:
    """Bad records in ``files``.  With ``expected`` (each file's record count, from
    dataset_info.json) every record a truncated file lost is counted; without, a file's
    unreadable tail (truncation, corruption) counts one, as does a missing file."""

    scans = _scans(files, num_classes, label_offset, parse, expected)
    return _eagerly(lambda: sum(bad for _, bad, _ in scans))


def _scans(files: Sequence[str], num_classes: int, label_offset: int, parse: Parser, expected):
    """Each file's ``_scan``, in order and as they are asked for."""
    for k, path in enumerate(files):
        want = expected[k] if expected else None
        yield _scan(path, num_classes, label_offset, parse, want)


def _scan(
    path: str, num_classes: int, label_offset: int, parse: Parser, want: int | None
) -> tuple[int, int, BadRecord | None]:
    """(records readable, bad records, the first bad one or None) of one file; ``want`` is its
    count in dataset_info.json (records beyond it are bad too, as is another count)."""
    readable, tail = _readable_records(path)
    if readable is None:
        return 0, want or 1, BadRecord(path, None, tail)
    good, first_bad = (int(n) for n in _checker(parse)(path, num_classes, label_offset))
    lost = abs(want - readable) if want is not None else 0
    bad = readable - good + max(lost, int(tail is not None))
    first = None
    if good < readable:
        index = first_bad if first_bad >= 0 else good
        serialized = next(iter(tf.data.TFRecordDataset(path).skip(index).take(1)))
        first = BadRecord(path, index, _reason(serialized, num_classes, label_offset, parse))
    elif tail is not None:
        first = BadRecord(path, readable, tail)
    elif lost:
        why = f"{readable} records, its dataset lists {want}"
        first = BadRecord(path, None, f"{why}: not the shard that was written")
    return readable, bad, first


def _eagerly(fn: Callable):
    """Run ``fn`` in eager mode: directly, or in a fresh thread when a graph is the default.

    libjpeg writes its complaints about the damaged records being scanned ("Premature end of
    JPEG data") straight to file descriptor 2; the scan's result says what is wrong instead.
    """
    with compat.native_stderr_silenced(True):
        if tf.executing_eagerly():
            return fn()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(fn).result()


def _readable_records(path: str) -> tuple[int | None, str | None]:
    """(records readable before the first read error, that error as a reason, or None).

    (None, reason) when the file cannot be opened.
    """
    try:
        return int(_counter(False)(path)), None
    except tf.errors.NotFoundError:
        return None, "file not found"
    except tf.errors.OpError as err:
        # TFRecordDataset ends a file at its first unreadable record; ignore_errors counts up to it.
        return int(_counter(True)(path)), f"truncated or corrupt record ({reason(err)})"


@functools.lru_cache(maxsize=None)
def _counter(ignore_errors: bool):
    @tf.function(input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
    def count(path):
        ds = tf.data.TFRecordDataset(path)
        if ignore_errors:
            ds = compat.ignore_errors(ds)
        return ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1)

    return count


@functools.lru_cache(maxsize=None)
def _checker(parse: Parser):
    """A tf.function (path, num_classes, label_offset) -> (good count, first failing index)."""

    def check(index, serialized, num_classes, label_offset):
        jpeg, label, bboxes = parse(serialized, label_offset)
        asserts = [
            tf.debugging.assert_greater_equal(label, 0),
            tf.debugging.assert_less(label, num_classes),
            tf.debugging.assert_greater_equal(bboxes, 0.0),
            tf.debugging.assert_less_equal(bboxes, 1.0),
        ]
        with tf.control_dependencies(asserts):
            index = tf.identity(index)
        # Outputs, not control dependencies: grappler prunes unused stateless ops like a decode.
        return index, tf.image.extract_jpeg_shape(jpeg), tf.shape(tf.io.decode_jpeg(jpeg, 3))

    def tally(state, element):
        # Records arrive in order minus the failing ones: the first gap is the first failure.
        good, first_bad = state
        index = element[0]
        first_bad = tf.where((first_bad < 0) & (index != good), good, first_bad)
        return good + 1, first_bad

    @tf.function(
        input_signature=[
            tf.TensorSpec([], tf.string),
            tf.TensorSpec([], tf.int32),
            tf.TensorSpec([], tf.int32),
        ],
        autograph=False,  # traced as written (see pipeline.as_written)
    )
    def scan(path, num_classes, label_offset):
        ds = tf.data.TFRecordDataset(path).enumerate()
        ds = ds.map(
            lambda i, r: check(i, r, num_classes, label_offset),
            num_parallel_calls=AUTOTUNE,
        )
        start = (tf.constant(0, tf.int64), tf.constant(-1, tf.int64))
        return compat.ignore_errors(ds).reduce(start, tally)

    return scan


def _reason(serialized, num_classes: int, label_offset: int, parse: Parser) -> str:
    """Why one record fails (eager; the checks of ``_checker``, one at a time)."""
    try:
        jpeg, label, bboxes = parse(serialized, label_offset)
    except tf.errors.OpError as err:
        kind = "TF-slim " if parse is schema.parse else ""
        return f"not a {kind}tf.train.Example ({reason(err)})"
    encoded = jpeg.numpy()
    if not encoded:
        return "no image bytes (image/encoded is missing or empty)"
    label = int(label)
    if not 0 <= label < num_classes:
        stored = ""
        if parse is schema.parse:
            stored = f" (stored {label + label_offset} minus label_offset {label_offset})"
        return f"label {label}{stored} is outside [0, {num_classes})"
    try:
        tf.image.extract_jpeg_shape(jpeg)
        tf.io.decode_jpeg(jpeg, channels=3)
    except tf.errors.OpError:
        return f"image/encoded ({len(encoded)} bytes) is not a decodable JPEG image"
    boxes = bboxes.numpy()
    if boxes.size and not ((boxes >= 0) & (boxes <= 1)).all():
        return "a bounding box coordinate is outside [0, 1]"
    return "the record fails the input pipeline's checks"


# ---------------------------------------------------------------- the command


@dataclasses.dataclass(frozen=True)
class FileCheck:
    """One shard's result: its records (dataset_info.json's count, else those readable), how
    many of them are bad, and the first bad one."""

    file: str
    records: int
    bad: int
    first: BadRecord | None


def check_folder(
    data_dir: str, meta: dict, num_classes: int, label_offset: int, split: str
) -> list[FileCheck]:
    """Every shard of ``split`` in ``data_dir``: the ones its dataset_info.json (``meta``)
    lists (a missing one is bad, as is one of another size or count), else the files named
    like shards; [] when the split has none."""
    prefix = schema.SPLIT_PREFIXES[split] + "-"
    wanted = {name: n for name, n in meta.get("files", {}).items() if name.startswith(prefix)}
    if wanted:
        files = [(os.path.join(data_dir, name), n) for name, n in sorted(wanted.items())]
    else:
        from vgg_keras.data import pipeline

        try:
            files = [(path, None) for path in pipeline.list_files(data_dir, split)]
        except UsageError:  # no shards of this split
            return []

    checks = []
    for path, want in tqdm(files, desc=f"diagnose {split}", unit="file", disable=None, leave=False):
        scan = functools.partial(_scan, path, num_classes, label_offset, schema.parse, want)
        readable, bad, first = _eagerly(scan)
        size = meta.get("bytes", {}).get(os.path.basename(path))  # as dataset_info.json lists
        if first is None and size is not None and readable and storage.getsize(path) != size:
            why = f"{storage.getsize(path)} bytes, {info.INFO_FILE} lists {size}"
            bad, first = want, BadRecord(path, None, f"{why}: not the shard that was written")
        checks.append(FileCheck(path, readable if want is None else want, bad, first))
    return checks


def _parser() -> argparse.ArgumentParser:
    parser = UsageParser(
        prog="python -m vgg_keras.data.diagnose",
        description="Check every record of a data folder's train-* and validation-* shards "
        "the way the input pipelines read them; name the first bad record of each file. "
        "Exit 0 when all are usable, 2 when some are not.",
    )
    parser.add_argument("data_dir", help="folder of TF-slim TFRecord shards")
    parser.add_argument(
        "--num_classes", type=int, help="labels must lie below it (default: dataset_info.json's)"
    )
    parser.add_argument(
        "--label_offset",
        type=int,
        help="subtracted from the stored labels (default: dataset_info.json's, else 1)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.num_classes is not None and args.num_classes < 1:
        raise UsageError(f"--num_classes must be at least 1, got {args.num_classes}")
    if not storage.isdir(args.data_dir):
        raise UsageError(f"data folder not found: {args.data_dir}")
    meta = info.read_info(args.data_dir)
    num_classes = args.num_classes if args.num_classes is not None else meta.get("num_classes")
    label_offset = meta.get("label_offset", 1) if args.label_offset is None else args.label_offset
    if num_classes is None:
        num_classes = 2**31 - 1
        print(
            f"note: labels checked for >= 0 only: no num_classes in {info.INFO_FILE}; "
            "pass --num_classes"
        )
    checks = {
        split: check_folder(args.data_dir, meta, num_classes, label_offset, split)
        for split in schema.SPLIT_PREFIXES
    }
    checks = {split: found for split, found in checks.items() if found}
    if not checks:
        raise UsageError(f"no train-* or validation-* TFRecord files in {args.data_dir}")
    for split, found in checks.items():
        for check in found:
            if check.bad:
                print(f"{check.first} ({check.bad} bad of {check.records} in this file)")
        records, bad = sum(c.records for c in found), sum(c.bad for c in found)
        print(f"{split}: {records} records in {len(found)} files, {bad} bad")
    every = [c for found in checks.values() for c in found]
    bad_files = [c for c in every if c.bad]
    if bad_files:
        total = sum(c.bad for c in bad_files)
        raise UsageError(
            f"{args.data_dir}: {total} bad record(s) in {len(bad_files)} of {len(every)} files"
        )
    print(f"{args.data_dir}: all {sum(c.records for c in every)} records are usable")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
