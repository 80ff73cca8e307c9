"""The one place that imports TensorFlow and Keras and decides what is version- or backend-specific.

Every other module does ``from vgg_keras.compat import tf, v1, keras``.  Set
``TF_CPP_MIN_LOG_LEVEL=0`` to see TensorFlow's native start-up messages, which are hidden by default.  Keras 3 cannot live
inside a ``tf.compat.v1.Session``; the Keras 2 package ``tf_keras`` can, so on TF >= 2.16 we ask
TensorFlow for it through ``TF_USE_LEGACY_KERAS=1`` before TensorFlow is imported.  Graphs are
built explicitly (``with tf.Graph().as_default()``) so eager mode stays available for host-side
utilities such as counting records or locating a corrupt one.

Two stacks: TF 2.16-2.21 (``tf_keras``) and TF 1.15 (built-in ``tf.keras``, the Ascend stack).
On TF 1.15 we switch on TensorFlow 2 behaviour (eager by default, resource variables, v2 control
flow and tf.data) and export ``tf.compat.v2`` as ``tf``, so the rest of the code is written once
against the TF 2 API and ``tf.compat.v1``; what 1.15 lacks (or names differently) is below, and
this is the only module that asks which TensorFlow it runs on.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import sys

import numpy as np

# Must be set before TensorFlow is imported anywhere in the process.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow 2 turns its oneDNN kernels on by itself only on x86 CPUs with AVX-512-VNNI, bf16 or
# AMX; on an AVX2-only CPU it falls back to Eigen's, whose convolution gradients made the demo's
# training steps 1.4-1.7x slower (docs/performance.md).  On for every x86 CPU unless the user chose
# (TF_ENABLE_ONEDNN_OPTS=0 still selects Eigen); TF 1.15 has no such switch.
if platform.machine().lower() in ("x86_64", "amd64"):
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
# TensorFlow 2 gives every CPU device of the process one intra-op pool, sized by the first
# device made: the eager context's, which building a graph with control flow initialises, so
# a session's intra_op_parallelism_threads (--intra_op_threads) would change nothing.  With this each
# session's devices get a pool of the size its config names.  TF 1.15 sizes it by the first
# session's, which is a run's own.
os.environ.setdefault("TF_OVERRIDE_GLOBAL_THREADPOOL", "1")
# --xla sets the session config's global_jit_level, which TensorFlow honours for GPUs only: on the
# CPU it also needs this flag (both stacks), read once, at import.  Where the level is off (no
# --xla) the flag changes nothing; it is added to the user's own TF_XLA_FLAGS.
_XLA_FLAGS = os.environ.get("TF_XLA_FLAGS", "")
if "--tf_xla_cpu_global_jit" not in _XLA_FLAGS:
    os.environ["TF_XLA_FLAGS"] = f"{_XLA_FLAGS} --tf_xla_cpu_global_jit".strip()


@contextlib.contextmanager
def native_stderr_silenced(enabled: bool):
    """Send file descriptor 2 to /dev/null: TensorFlow's native start-up lines (oneDNN, CUDA
    probing) are written before its log level applies, and would bury our one-line errors."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


with native_stderr_silenced(os.environ["TF_CPP_MIN_LOG_LEVEL"] not in ("0", "1")):
    import tensorflow as _tensorflow

    TF_RELEASE = _tensorflow.__version__
    TF_VERSION = tuple(int(p) for p in TF_RELEASE.split(".")[:2])
    TF1 = TF_VERSION < (2, 0)  # TF 1.15: the reference's and Ascend's stack
    if TF1:
        _tensorflow.compat.v1.enable_v2_behavior()
    tf = _tensorflow.compat.v2 if TF1 else _tensorflow
    # Device discovery (and the CUDA probe's complaint on GPU-less hosts) happens here, once.
    # (tf.config.experimental's device functions are the names both stacks have.)
    _PHYSICAL_GPUS = tf.config.experimental.list_physical_devices("GPU")

if TF_VERSION >= (2, 16):
    import tf_keras as keras  # noqa: E402
else:  # TF 1.15: tf.keras is Keras 2 already.
    keras = tf.keras

v1 = tf.compat.v1
tf.get_logger().setLevel("ERROR")  # deprecation notices from v1 APIs are not for our users


def npu_available() -> bool:
    """True where Huawei's ``npu_bridge`` can be imported (Ascend hosts)."""
    return importlib.util.find_spec("npu_bridge") is not None


def gpu_count() -> int:
    return len(_PHYSICAL_GPUS)


def cpu_flags() -> frozenset:
    """The host CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def fast_bf16() -> bool:
    """False where bf16 arithmetic would be emulated: no GPU and a CPU known to lack bf16
    instructions (an x86 CPU without AVX-512-BF16/AMX there runs bf16 many times slower than
    fp32), and always on TF 1.15 (no oneDNN bf16 kernels).  True where it cannot be told (no
    /proc/cpuinfo)."""
    if TF1:
        return False
    flags = cpu_flags()
    return bool(gpu_count()) or not flags or any(f in flags for f in ("avx512_bf16", "amx_bf16"))


# oneDNN ISAs below AVX-512: oneDNN has no bf16 convolution capped at one of them (AVX2_VNNI_2
# has one, on a CPU with AVX-NE-CONVERT).  Measured: each of these fails, AVX512_CORE and up run.
_ONEDNN_CAPS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2")


def onednn_cap_without_bf16() -> str | None:
    """ONEDNN_MAX_CPU_ISA where it leaves oneDNN no bf16 kernels that TensorFlow 2 hands bf16
    ops all the same (it decides from the CPU's AVX-512, not from the cap): a bf16 graph would
    fail at its first convolution with oneDNN's "could not create a primitive descriptor".
    None where bf16 runs: no cap, a CPU without AVX-512 (Eigen's kernels), oneDNN switched off,
    a GPU, TF 1.15."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip()
    if cap.upper() not in _ONEDNN_CAPS_WITHOUT_BF16 or TF1 or gpu_count():
        return None
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip().lower() in ("0", "false"):
        return None
    flags = cpu_flags()
    if "avx512f" not in flags or cap.upper() == "AVX2_VNNI_2" and "avx_ne_convert" in flags:
        return None
    return cap


def session_config(intra_op_threads: int, inter_op_threads: int, xla: bool) -> v1.ConfigProto:
    """A ConfigProto for CPU/GPU sessions: soft placement, GPU memory growth, optional XLA."""
    config = v1.ConfigProto(
        allow_soft_placement=True,
        intra_op_parallelism_threads=intra_op_threads,
        inter_op_parallelism_threads=inter_op_threads,
        # The process's inter-op pool is made by its first session, with that session's size;
        # a session that names its own size gets a pool of its own.
        use_per_session_threads=inter_op_threads > 0,
    )
    config.gpu_options.allow_growth = True
    if xla:
        config.graph_options.optimizer_options.global_jit_level = v1.OptimizerOptions.ON_1
    return config


# TF 1.15's collective all-reduce cannot run inside the sunk training loop (its scoped-allocator
# rewrite joins ops across while-loop frames), so multi-worker training needs TF 2 here.
MULTI_WORKER = not TF1


def split_cpu(count: int) -> None:
    """Make the host CPU ``count`` logical devices (a no-op if it is already); RuntimeError if
    TensorFlow has set up its devices with another split."""
    cpu = tf.config.experimental.list_physical_devices("CPU")[0]
    current = tf.config.experimental.get_virtual_device_configuration(cpu)
    if current is not None and len(current) == count:
        return
    tf.config.experimental.set_virtual_device_configuration(
        cpu, [tf.config.experimental.VirtualDeviceConfiguration()] * count
    )


# Keras 2.2.4-tf (TF 1.15) has the dtype policies under ``experimental`` with other function
# names; with TF 2 behaviour switched on it accepts the same policy names.
if TF1:
    _set_global_policy = keras.mixed_precision.experimental.set_policy
    _global_policy = keras.mixed_precision.experimental.global_policy
else:
    _set_global_policy = keras.mixed_precision.set_global_policy
    _global_policy = keras.mixed_precision.global_policy


def set_precision_policy(precision: str) -> None:
    """Apply the Keras dtype policy for 'fp32', 'bf16' or 'fp16' (variables stay float32)."""
    name = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}[precision]
    if TF1:
        # Keras 2.2.4-tf's "mixed_float16" policy makes a dynamic loss scale of its own, whose
        # variables take the name current_loss_scale before the optimizer's (then unused, and
        # the checkpoint's current_loss_scale would be that one): the optimizer scales the loss.
        name = keras.mixed_precision.experimental.Policy(name, loss_scale=None)
    _set_global_policy(name)


@contextlib.contextmanager
def precision_policy(precision: str):
    """The Keras dtype policy of ``precision`` for the layers built inside, then the previous
    one again: layers keep the policy they were built with, and the policy is process-global."""
    previous = _global_policy()
    set_precision_policy(precision)
    try:
        yield
    finally:
        _set_global_policy(previous)


def loss_scale_optimizer(optimizer):
    """``optimizer`` with dynamic loss scaling (fp16), a v1 optimizer for Session graphs."""
    where = v1.train.experimental if TF1 else v1.mixed_precision
    return where.MixedPrecisionLossScaleOptimizer(optimizer, "dynamic")


def seeded_at_run_time(initializer):
    """``initializer``, a Keras one, with its seed read when the graph runs; the same weights.

    TF 2's Keras draws initial weights with stateless random ops on a constant seed, so
    Grappler's constant folding computes every kernel at the initialisers' first run only to
    discard it as too large: 4 s of each start of the fine-tuning network, 6 s of VGG16 at
    224 px.  A seed behind a PlaceholderWithDefault is not folded.  (TF 1.15's Keras draws with
    stateful ops, which are never folded.)
    """
    generator = getattr(initializer, "_random_generator", None)
    if getattr(generator, "_rng_type", None) == "stateless":
        constant = generator.make_seed_for_stateless_op
        generator.make_seed_for_stateless_op = lambda: v1.placeholder_with_default(constant(), [2])
    return initializer


def threading_options(options):
    """The thread-pool part of a ``tf.data.Options`` (``experimental_threading`` on TF 1.15)."""
    return options.experimental_threading if TF1 else options.threading


def without_autotune(dataset):
    """``dataset`` without tf.data's autotuning (its AUTOTUNE values become fixed defaults).

    The autotuner's thread sleeps up to a minute between rounds, and destroying an iterator
    waits for it: re-initialising the evaluation's iterator took 15-30 s within a training run,
    and closing the training session up to a minute after the run's last step.
    """
    options = tf.data.Options()
    if TF1:
        options.experimental_optimization.autotune = False
    else:
        options.autotune.enabled = False
    return dataset.with_options(options)


@contextlib.contextmanager
def device_datasets_without_autotune():
    """Within: the strategies' per-device datasets are made without tf.data's autotuning.

    With several local replicas, a strategy's iterator prefetches each replica's batches
    through a dataset of its own (MultiDeviceIterator), which does not inherit the input's
    options: TF 1.15 turned its autotuning off, TF 2 leaves it on, and closing the session or
    re-initialising the evaluation's iterator then waits for the autotuner's thread (5-18 s
    after a two-replica run's "done" was measured).
    """
    if TF1:
        yield
        return
    from tensorflow.python.data.ops import multi_device_iterator_ops as ops

    made = ops._create_device_dataset
    ops._create_device_dataset = lambda *args: without_autotune(made(*args))
    try:
        yield
    finally:
        ops._create_device_dataset = made


def map_fn(fn, elems, dtype):
    """``tf.map_fn`` with its output's types (``dtype`` on TF 1.15, ``fn_output_signature``
    on TF 2, where ``dtype`` is deprecated), one element after another: where it maps inside
    parallel calls (the input pipeline's), the calls are the parallelism."""
    if TF1:
        return tf.map_fn(fn, elems, dtype=dtype, parallel_iterations=1)
    return tf.map_fn(fn, elems, fn_output_signature=dtype, parallel_iterations=1)


def import_tfds():
    """``tensorflow_datasets``, kept off the network: TFDS 3.x (the one for TF 1.15) looks up
    any builder without a prepared folder in Google's bucket, retrying for minutes offline."""
    import tensorflow_datasets as tfds

    if TF1:
        from tensorflow_datasets.core.utils import gcs_utils

        gcs_utils.is_gcs_disabled = lambda: True
    return tfds


def ignore_errors(dataset):
    """``dataset`` without the elements whose computation fails (both stacks' spelling)."""
    return dataset.apply(tf.data.experimental.ignore_errors())


class SessionCall:
    """``session.run(fetches, feed)`` for one dict of fetches and one list of fed tensors, made
    once: a TensorFlow callable, without the Python ``run`` spends on every call resolving the
    fetches and converting the feeds (0.5-0.9 ms: 5-10% of a small network's step on 2 cores).
    Tensors come back as ``run`` returns them; operations as None.  ``through_run``: call
    ``session.run`` itself (Ascend's device loop is documented for it).
    """

    def __init__(self, session: v1.Session, fetches: dict, feeds: list, through_run=False):
        from tensorflow.core.protobuf import config_pb2

        self._session, self._fetches, self._feeds = session, fetches, feeds
        self._names = list(fetches)
        self._tensors = [n for n in self._names if not isinstance(fetches[n], tf.Operation)]
        self._dtypes = [t.dtype.as_numpy_dtype for t in feeds]
        self._callable = None
        if not through_run:
            options = config_pb2.CallableOptions(
                feed=[t.name for t in feeds],
                fetch=[fetches[n].name for n in self._tensors],
                target=[fetches[n].name for n in self._names if n not in self._tensors],
            )
            # The private API Keras' own graph-mode functions run on, on both stacks.
            self._callable = session._make_callable_from_options(options)

    def __call__(self, *values) -> dict:
        feeds = [np.asarray(v, dtype) for v, dtype in zip(values, self._dtypes)]
        if self._callable is None:
            return self._session.run(self._fetches, dict(zip(self._feeds, feeds)))
        # Each value as run returns it: a NumPy scalar for a scalar tensor.
        results = dict(zip(self._tensors, (r[()] for r in self._callable(*feeds))))
        return {n: results.get(n) for n in self._names}
