"""The one place that imports TensorFlow and Keras and decides what is version- or backend-specific.

Every other module does ``from vgg_keras.compat import tf, v1, keras``.  Set
``TF_CPP_MIN_LOG_LEVEL=0`` to see TensorFlow's native start-up messages, which are hidden by default.  Keras 3 cannot live
inside a ``tf.compat.v1.Session``; the Keras 2 package ``tf_keras`` can, so on TF >= 2.16 we ask
TensorFlow for it through ``TF_USE_LEGACY_KERAS=1`` before TensorFlow is imported.  Graphs are
built explicitly (``with tf.Graph().as_default()``) so eager mode stays available for host-side
utilities such as counting records or locating a corrupt one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys

# Must be set before TensorFlow is imported anywhere in the process.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def _native_stderr_silenced(enabled: bool):
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


with _native_stderr_silenced(os.environ["TF_CPP_MIN_LOG_LEVEL"] not in ("0", "1")):
    import tensorflow as tf

    # Device discovery (and the CUDA probe's complaint on GPU-less hosts) happens here, once.
    _PHYSICAL_GPUS = tf.config.list_physical_devices("GPU")

TF_VERSION = tuple(int(p) for p in tf.__version__.split(".")[:2])

if TF_VERSION >= (2, 16):
    import tf_keras as keras  # noqa: E402
else:  # TensorFlow before 2.16 ships Keras 2 as tf.keras (pyproject.toml asks for >= 2.16).
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
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def fast_bf16() -> bool:
    """False where bf16 arithmetic would be emulated: no GPU and a CPU known to lack bf16
    instructions (an x86 CPU without AVX-512-BF16/AMX there runs bf16 many times slower than
    fp32).  True where it cannot be told (no /proc/cpuinfo)."""
    flags = cpu_flags()
    return bool(gpu_count()) or not flags or any(f in flags for f in BF16_CPU_FLAGS)


def session_config(
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
    xla: bool = False,
    log_device_placement: bool = False,
) -> v1.ConfigProto:
    """A ConfigProto for CPU/GPU sessions: soft placement, GPU memory growth, optional XLA."""
    config = v1.ConfigProto(
        allow_soft_placement=True,
        log_device_placement=log_device_placement,
        intra_op_parallelism_threads=intra_op_threads,
        inter_op_parallelism_threads=inter_op_threads,
    )
    config.gpu_options.allow_growth = True
    if xla:
        config.graph_options.optimizer_options.global_jit_level = v1.OptimizerOptions.ON_1
    return config


def set_precision_policy(precision: str) -> None:
    """Apply the Keras dtype policy for 'fp32', 'bf16' or 'fp16' (variables stay float32)."""
    name = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}[precision]
    keras.mixed_precision.set_global_policy(name)


@contextlib.contextmanager
def precision_policy(precision: str):
    """The Keras dtype policy of ``precision`` for the layers built inside, then the previous
    one again: layers keep the policy they were built with, and the policy is process-global."""
    previous = keras.mixed_precision.global_policy()
    set_precision_policy(precision)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)
