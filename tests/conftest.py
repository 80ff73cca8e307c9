"""Shared fixtures: the demo dataset (built once per session) and a writer of small TFRecord shards.

Tests run in eager mode; graph mode only inside explicit ``with tf.Graph().as_default():``.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from vgg_keras import compat
from vgg_keras.compat import tf
from vgg_keras.data import info, schema, shards
from vgg_keras.tools import demo

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (xmin, ymin, xmax, ymax) fractions, as schema.to_example; a string: Python 3.7 has no tuple[...]
Box = "tuple[float, float, float, float]"


# Modules whose tests run the CLIs in subprocesses (each start imports TensorFlow, seconds):
# all slow, so that `make test-quick` (-m "not slow") stays an edit-test loop of a few minutes.
SUBPROCESS_MODULES = ("test_e2e_", "test_hostile", "test_cross_stack", "test_launch")


def pytest_configure(config) -> None:
    """A suite started in the background by a shell without job control (``make test &``,
    ``nohup``) inherits SIGINT ignored, and so would every CLI it starts: the tests that Ctrl-C
    a CLI would see it run on.  A handler here makes the children start with the default.
    xdist 3.6 and later sort the files by their number of tests unless told not to; the suite
    hands them out in its own order (COSTLIEST_FIRST, below)."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


# On TF 1.15 the suite runs what that stack can change: compat, the graphs, checkpoints, the
# loop, input pipelines, evaluation, export, distribution, Ascend, the programs end to end.
# These files test code with nothing stack-specific in it (settings, the run folder, the file
# tools, the cluster files, reporting, the layout), or run both stacks themselves
# (test_cross_stack); the TF 2 suite runs them.  The demo's 20 epochs (test_e2e_demo) are
# TF 2's too: on TF 1.15 the training steps equal the reference's (test_reference_parity) and
# the evaluation tests' run learns (test_e2e_eval), through the same programs.
STACK_NEUTRAL = (
    "test_api", "test_bench", "test_clock", "test_cluster_files", "test_config", "test_convert",
    "test_cross_stack", "test_demo", "test_diagnose", "test_e2e_demo", "test_e2e_imagenet",
    "test_e2e_readme", "test_hostile", "test_layout", "test_plateau", "test_reporting",
    "test_results", "test_rundir", "test_runstart", "test_throughput",
)  # fmt: skip
collect_ignore = [f"{name}.py" for name in STACK_NEUTRAL] if compat.TF1 else []


# Within the other files, a test marked ``stack_neutral`` (or a parameter of one) checks nothing
# that the stack changes beyond what the file's other tests check on TF 1.15 (a second network
# of the same table, a file format read without TensorFlow): the TF 2 suite runs it.
stack_neutral = pytest.mark.stack_neutral
_left_to_tf2: list = []


# The costliest files first (wall seconds measured in a whole run), the rest in their own order:
# xdist's --dist loadfile hands files out in this order (pytest_configure turns off its own
# reordering by test count), so the two test processes end together instead of one idling
# through the other's last long file.  The demo's run comes first: test_e2e_readme trains from it.
COSTLIEST_FIRST = (
    "test_e2e_demo", "test_reliability", "test_training", "test_e2e_readme", "test_bench",
    "test_distribute", "test_hostile", "test_launch", "test_e2e_imagenet", "test_e2e_family",
    "test_e2e_reference_cli", "test_convert", "test_training_step", "test_cross_stack",
    "test_e2e_eval", "test_diagnose", "test_reference_parity", "test_e2e_storage",
    "test_evaluation", "test_train_graph", "test_keras_weights", "test_pipeline", "test_e2e_npu",
)  # fmt: skip


def pytest_collection_modifyitems(config, items) -> None:
    rank = {name: i for i, name in enumerate(COSTLIEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__, len(rank)))  # stable: in-file order
    for item in items:
        if item.module.__name__.startswith(SUBPROCESS_MODULES):
            item.add_marker(pytest.mark.slow)
    if compat.TF1:
        _left_to_tf2[:] = [item for item in items if item.get_closest_marker("stack_neutral")]
        if _left_to_tf2:
            config.hook.pytest_deselected(items=_left_to_tf2)
            items[:] = [item for item in items if item not in _left_to_tf2]


def pytest_terminal_summary(terminalreporter) -> None:
    if collect_ignore:
        terminalreporter.write_line(
            f"TF 1.15: {len(collect_ignore)} stack-neutral test files, and the tests marked "
            "stack_neutral, are the TF 2 suite's (tests/conftest.py STACK_NEUTRAL)"
        )


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """JPEG bytes of a uint8 (H, W) or (H, W, C) array (C = 1 or 3)."""
    pixels = np.asarray(image, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return tf.io.encode_jpeg(tf.constant(pixels), quality=quality).numpy()


def write_shards(
    out_dir: str,
    images: Sequence[np.ndarray | bytes],
    labels: Sequence[int],
    *,
    split: str = "train",
    num_shards: int = 1,
    bboxes: Sequence[list[Box] | None] | None = None,
    num_classes: int | None = None,
    with_info: bool = True,
) -> list[str]:
    """Write one split of records into ``out_dir``; returns the shard paths in order.

    ``images`` are uint8 arrays (JPEG-encoded here) or raw bytes stored as they are (to make
    broken records); ``labels`` are the *stored* labels (1-based, as TF-slim ImageNet).  Records
    are dealt round-robin into ``num_shards`` shards, so record ``r`` lands in shard
    ``r % num_shards`` at index ``r // num_shards``.  With ``with_info`` the folder's
    dataset_info.json gains this split's counts (other splits already there are kept).
    """
    os.makedirs(out_dir, exist_ok=True)
    examples = []
    for i, (image, label) in enumerate(zip(images, labels)):
        if isinstance(image, bytes):
            encoded, height, width = image, 0, 0
        else:
            encoded, (height, width) = encode_jpeg(image), np.shape(image)[:2]
        boxes = bboxes[i] if bboxes is not None else None
        examples.append(
            schema.to_example(encoded, int(label), int(height), int(width), bboxes=boxes)
        )
    counts = shards.write_split(examples, out_dir, split, num_shards)
    if with_info:
        meta = info.read_info(out_dir) or {"label_offset": 1, "splits": {}, "files": {}}
        meta["num_classes"] = num_classes or int(max(labels))
        meta["splits"][split] = len(examples)
        meta["files"].update(counts)
        info.write_info(out_dir, meta)
    return [os.path.join(out_dir, name) for name in sorted(counts)]


def demo_config(preset: str = "demo", **settings):
    """A validated Config: ``preset`` with ``settings`` over it (as run_train.py resolves its
    flags; class_num from the dataset like training)."""
    from vgg_keras import config
    from vgg_keras.data import pipeline

    return config.resolve(preset, settings, dataset_classes=pipeline.needed_classes)


def shared_once(tmp_path_factory, name: str, build) -> str:
    """``build(folder)`` once per test session: under pytest-xdist the workers share one
    folder (the first builds it, the others wait for it); returns the folder."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / f"{name}.done").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(str(folder))
            (root / f"{name}.done").write_text("")
    return str(folder)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> str:
    """The embedded digits dataset, built once per session. Treat it as read-only."""
    return shared_once(tmp_path_factory, "demo", demo.build)


@pytest.fixture(scope="session")
def shard_writer():
    """``write_shards`` (see above) for tests that build their own small datasets."""
    return write_shards


@pytest.fixture(scope="session")
def jpeg_encoder():
    """``encode_jpeg`` (see above): uint8 array -> JPEG bytes."""
    return encode_jpeg


@pytest.fixture
def small_tmpfs(tmp_path):
    """Mounts a tmpfs of a given size (root only); yields the mount function, unmounts after."""
    mounted = []

    def mount(size: int) -> Path:
        point = tmp_path / f"tmpfs{len(mounted)}"
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
            capture_output=True,
        )
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "--lazy", str(point)], check=False)


def make_unwritable(folder) -> None:
    """chmod for users; root ignores it, the immutable attribute stops root too."""
    if os.geteuid() != 0:
        os.chmod(folder, 0o555)
    elif subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
        pytest.skip(f"cannot make {folder} unwritable for root (chattr +i failed)")


def make_writable(folder) -> None:
    if os.geteuid() != 0:
        os.chmod(folder, 0o755)
    else:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


# The programs the run_*.py scripts run (commands.PROGRAMS), by script name.
PROGRAMS = {f"run_{name}.py": name for name in ("train", "eval", "export", "predict")}
# Flags that set up the process itself (TensorFlow's devices, a distribution's runtime): a run
# with one of them gets a fresh process, as the command line does.
PROCESS_FLAGS = ("--devices", "--distribution")


def run_script(
    script: str, *args: str, timeout: float = 300, env: dict | None = None, fresh: bool = False
) -> subprocess.CompletedProcess:
    """Run one of the repository's ``run_*.py`` scripts; its exit code and output as text.

    By default in this process: the same ``commands.main(program, argv)`` that the script
    runs, its stdout and stderr captured, so a test file starts TensorFlow once instead of once
    per command (seconds each).  In a fresh Python with ``fresh``, with ``env`` (the whole
    environment), or with a flag that sets up the process (``PROCESS_FLAGS``): what a test of
    the process itself needs.  (In this process, TensorFlow's own native log lines are not part
    of the captured stderr; the programs' own lines are.)
    """
    args = tuple(map(str, args))
    if fresh or env is not None or any(a.split("=")[0] in PROCESS_FLAGS for a in args):
        command = [sys.executable, os.path.join(REPO_ROOT, script), *args]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT, env=env
        )
    return run_in_process(script, *args)


def logged_losses(output: str) -> list[float]:
    """The ``loss:`` of every step line a training printed, in order."""
    return [float(x) for x in re.findall(r"  step:\s+\d+ .*?  loss:\s*([\d.]+)", output)]


def run_in_process(script: str, *args: str, cwd: str = REPO_ROOT) -> subprocess.CompletedProcess:
    """``script``'s program called in this process, in the folder ``cwd`` (see ``run_script``)."""
    from vgg_keras import commands, compat

    out, err = io.StringIO(), io.StringIO()
    argv0, before = sys.argv[0], os.getcwd()
    sys.argv[0] = os.path.join(REPO_ROOT, script)  # argparse's prog: the script's name
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = commands.main(PROGRAMS[os.path.basename(script)], list(args))
            except SystemExit as done:  # --help, --version
                code = done.code or 0
    finally:
        sys.argv[0] = argv0
        os.chdir(before)
        compat.set_precision_policy("fp32")  # the Keras dtype policy is global
    return subprocess.CompletedProcess([script, *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def script_runner():
    """``run_script`` (see above): the real command line, exit code and output."""
    return run_script


@pytest.fixture(scope="session")
def demo_checkpoint(eval_run) -> str:
    """A small trained run whose newest checkpoint is model.ckpt-150 (the evaluation tests' run:
    one training serves both).  Treat it as read-only."""
    return eval_run


@pytest.fixture(scope="session")
def demo_run(demo_dir, tmp_path_factory) -> str:
    """The README's demo, ``run_train.py --preset demo`` as a real subprocess (about a minute).

    Trained once per session and shared by the end-to-end tests; returns its log folder
    (checkpoints, train.log, metrics.jsonl with the eval_top1 records, config.json).  Treat it
    as read-only.
    """

    def train(log_dir: str) -> None:
        args = ("--preset", "demo", "--data_dir", demo_dir, "--log_dir", log_dir)
        proc = run_script("run_train.py", *args, timeout=900)
        if proc.returncode != 0:
            pytest.fail(
                f"demo run exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
            )

    return shared_once(tmp_path_factory, "demo_cli_run", train)


@pytest.fixture(scope="session")
def train_tiny(demo_dir):
    """Train in this process on the demo data with a tiny VGG16 (width 0.0625, log every step).

    ``train_tiny(log_dir, **overrides)`` returns ``(exit code, Config)``; overrides are
    settings over the demo preset's.  The Keras dtype policy is global, so it is put back to
    float32 afterwards for the tests that follow a bf16/fp16 run.
    """
    from vgg_keras import compat, training

    def run(log_dir, **overrides):
        values = dict(
            data_dir=demo_dir,
            width_multiplier=0.0625,
            mode="train",
            display_every=1,
            progress=False,
        )
        config = demo_config(log_dir=str(log_dir), **{**values, **overrides})
        try:
            return training.train(config), config
        finally:
            compat.set_precision_policy("fp32")

    return run


@pytest.fixture(scope="session")
def eval_run(demo_dir, tmp_path_factory) -> str:
    """Three checkpoints of one small run for the evaluation tests: a VGG16 (width 0.125)
    trained 150 steps on the demo data, saved at steps 50, 100 and 150 (~70% top-1 at the end,
    ~10 s).  Returns its log folder (with config.json).  Treat it as read-only.
    """
    from vgg_keras import training

    def train(log_dir: str) -> None:
        config = demo_config(
            data_dir=demo_dir,
            log_dir=log_dir,
            width_multiplier=0.125,
            max_train_steps=150,
            max_epochs=3.0,
            T_max=3.0,
            save_checkpoints_steps=50,
            mode="train",
            progress=False,
        )
        assert training.train(config) == 0

    return shared_once(tmp_path_factory, "eval_run", train)


def write_reference_checkpoint(
    folder: str,
    arch: str = "vgg16",
    width: float = 0.0625,
    image_size: int = 32,
    class_num: int = 10,
    steps: int = 2,
) -> str:
    """A checkpoint in the reference implementation's layout, written the way its Estimator
    writes one: a ``tf.compat.v1.layers`` VGG (``conv2d`` ... ``dense_2``, named by creation
    order), its label-smoothed loss plus weight decay over every trainable variable, Nesterov
    momentum (``.../Momentum`` slots) and ``global_step``, trained ``steps`` steps on a random
    batch and saved as ``<folder>/model.ckpt-<steps>``.  Returns the prefix."""
    from vgg_keras import arch as arch_lib
    from vgg_keras.compat import v1

    row = arch_lib.get(arch)
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(steps)
        images = tf.random.stateless_normal([4, image_size, image_size, 3], seed=[1, 2])
        labels = tf.constant([0, 1, 2, 3]) % class_num
        x = images
        for repeats, filters in zip(row.convs_per_block, arch_lib.BLOCK_FILTERS):
            for _ in range(repeats):
                x = v1.layers.conv2d(
                    x, max(1, round(filters * width)), 3, padding="same", activation=tf.nn.relu
                )
            x = v1.layers.max_pooling2d(x, 2, 2, padding="same")
        x = tf.reshape(x, [-1, int(np.prod(x.shape[1:]))])
        for _ in range(2):
            x = v1.layers.dense(x, max(1, round(arch_lib.FC_UNITS * width)), tf.nn.relu)
        logits = v1.layers.dense(x, class_num)
        loss = v1.losses.softmax_cross_entropy(
            tf.one_hot(labels, class_num), logits, label_smoothing=0.1
        )
        loss += 1e-4 * tf.add_n([tf.nn.l2_loss(v) for v in v1.trainable_variables()])
        step = v1.train.get_or_create_global_step()
        train = v1.train.MomentumOptimizer(0.01, 0.9, use_nesterov=True).minimize(loss, step)
        saver = v1.train.Saver()
        init = v1.global_variables_initializer()
    with v1.Session(graph=graph) as sess, graph.as_default():
        sess.run(init)
        for _ in range(steps):
            sess.run(train)
        return saver.save(sess, os.path.join(folder, "model.ckpt"), global_step=steps)


@pytest.fixture(scope="session")
def reference_checkpoint_writer():
    """``write_reference_checkpoint`` (see above)."""
    return write_reference_checkpoint


PHOTO_CLASSES = ("astronaut", "coffee", "chelsea")  # scikit-image's sample photographs


def write_photo_folder(folder: str, per_class: int = 27, seed: int = 0) -> str:
    """A folder of one sub-folder per class of real JPEG photographs, as a user brings them:
    ``folder/<class>/<class>_NN.jpg``, random crops (30-100% of the side, any aspect), flips and
    colour changes of scikit-image's sample photos, of several sizes.  Returns ``folder``."""
    import skimage.data

    rng = np.random.default_rng(seed)
    for name in PHOTO_CLASSES:
        photo = getattr(skimage.data, name)()
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        for k in range(per_class):
            h, w = photo.shape[:2]
            ch, cw = (int(side * rng.uniform(0.3, 1.0)) for side in (h, w))
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            crop = photo[y : y + ch, x : x + cw].astype(np.float32)
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            crop = np.clip(crop * rng.uniform(0.7, 1.3, 3) + rng.normal(0, 8), 0, 255)
            size = [int(rng.integers(80, 300)), int(rng.integers(80, 300))]
            small = tf.image.resize(crop, size, antialias=True).numpy()
            jpeg = encode_jpeg(np.clip(np.round(small), 0, 255), quality=int(rng.integers(70, 95)))
            with open(os.path.join(folder, name, f"{name}_{k:02d}.jpg"), "wb") as f:
                f.write(jpeg)
    return folder
