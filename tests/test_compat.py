"""compat: what it tells about the host (the bf16 check that guards against emulated bf16)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT

from vgg_keras import compat
from vgg_keras.compat import tf, v1


@pytest.mark.parametrize(
    "flags, gpus, fast",
    [
        ({"avx2", "fma"}, 0, False),  # AMD EPYC (Zen 2/3), older Xeons: bf16 is emulated
        ({"avx2", "avx512f", "avx512_bf16"}, 0, True),  # Cooper Lake, Zen 4
        ({"avx2", "avx512f", "amx_bf16", "amx_tile"}, 0, True),  # Sapphire Rapids
        ({"avx2"}, 1, True),  # a GPU does the arithmetic
        (set(), 0, True),  # no /proc/cpuinfo: cannot tell, no warning
    ],
)
def test_fast_bf16_follows_the_cpu_flags_and_gpus(monkeypatch, flags, gpus, fast):
    monkeypatch.setattr(compat, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(compat, "gpu_count", lambda: gpus)
    assert compat.fast_bf16() is (fast and not compat.TF1)  # TF 1.15 emulates bf16 anywhere


AVX512 = {"avx2", "avx512f", "avx512_bf16"}


@pytest.mark.parametrize(
    "cap, flags, onednn, refused",
    [
        ("AVX2", AVX512, "1", True),  # TensorFlow hands oneDNN bf16 ops it has no kernels for
        ("avx2_vnni", AVX512, None, True),  # oneDNN reads the cap in any case; on by default
        ("AVX2_VNNI_2", AVX512, "1", True),
        ("AVX2_VNNI_2", AVX512 | {"avx_ne_convert"}, "1", False),  # its bf16 kernels exist
        ("AVX512_CORE", AVX512, "1", False),  # emulated with AVX-512, but runs
        ("AVX2", {"avx2", "fma"}, "1", False),  # no AVX-512: TensorFlow keeps bf16 on Eigen
        ("AVX2", AVX512, "0", False),  # oneDNN switched off
        ("AVX2", AVX512, "false", False),
        ("", AVX512, "1", False),
    ],
)
def test_a_onednn_cap_without_bf16_kernels_is_named(monkeypatch, cap, flags, onednn, refused):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    if onednn is None:
        monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    else:
        monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", onednn)
    monkeypatch.setattr(compat, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(compat, "gpu_count", lambda: 0)
    expected = cap if refused and not compat.TF1 else None  # TF 1.15 has no oneDNN kernels
    assert compat.onednn_cap_without_bf16() == expected
    monkeypatch.setattr(compat, "gpu_count", lambda: 1)  # the GPU does the arithmetic
    assert compat.onednn_cap_without_bf16() is None


def _xla_ops(xla: bool) -> set:
    """The XLA ops in the graph a session with compat.session_config(xla=...) ran."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [8, 16])
        y = tf.reduce_sum(tf.nn.relu(tf.matmul(x, tf.ones([16, 16])) + 1.0) * 2.0)
    meta = tf.compat.v1.RunMetadata()
    options = tf.compat.v1.RunOptions(output_partition_graphs=True)
    with tf.compat.v1.Session(graph=graph, config=compat.session_config(1, 1, xla)) as session:
        session.run(y, {x: np.ones((8, 16), np.float32)}, options=options, run_metadata=meta)
    return {node.op for part in meta.partition_graphs for node in part.node if "Xla" in node.op}


def test_xla_compiles_the_sessions_graph_on_the_cpu_too_and_only_when_asked():
    """TensorFlow honours the session's global_jit_level on GPUs only, unless the CPU flag that
    compat adds to TF_XLA_FLAGS is set: without it --xla did nothing here."""
    assert "--tf_xla_cpu_global_jit" in os.environ["TF_XLA_FLAGS"].split()
    assert {"_XlaCompile", "_XlaRun"} <= _xla_ops(True)
    assert not _xla_ops(False)


def test_cpu_flags_agree_with_numpys_own_cpu_detection():
    """numpy detects the CPU's features itself (cpuid, not /proc/cpuinfo): an independent
    witness for the flags that decide fast_bf16."""
    import numpy as np

    umath = getattr(np, "_core", getattr(np, "core", None))._multiarray_umath
    features = getattr(umath, "__cpu_features__", None)
    flags = compat.cpu_flags()
    if not flags or not features:
        pytest.skip("no /proc/cpuinfo flags, or a numpy without __cpu_features__")
    for flag, feature in (
        ("sse2", "SSE2"),
        ("avx2", "AVX2"),
        ("fma", "FMA3"),
        ("avx512f", "AVX512F"),
    ):
        if feature in features:
            assert (flag in flags) == features[feature], flag


def test_seeded_initial_weights_are_the_same_and_out_of_constant_foldings_reach():
    """The seed goes through a PlaceholderWithDefault (TF 2's Keras: stateless ops), so Grappler
    cannot fold the kernels; the values are Keras' own for that seed."""
    from vgg_keras.compat import keras, tf

    def drawn(wrap: bool):
        graph = tf.Graph()
        with graph.as_default():
            init = keras.initializers.VarianceScaling(2.0, "fan_in", "truncated_normal", 5)
            kernel = (compat.seeded_at_run_time(init) if wrap else init)([3, 3, 4, 8])
            with compat.v1.Session(graph=graph) as session:
                return session.run(kernel), {op.type for op in graph.get_operations()}

    (plain, plain_ops), (wrapped, wrapped_ops) = drawn(False), drawn(True)
    assert (plain == wrapped).all()
    if compat.TF1:  # stateful ops: nothing to fold, nothing changed
        assert wrapped_ops == plain_ops
    else:
        assert "PlaceholderWithDefault" in wrapped_ops - plain_ops


# A convolution's gradients in a fresh Python that imports vgg_keras first: the kernels it ran.
KERNELS = """
from vgg_keras.compat import tf, v1
with tf.Graph().as_default():
    x, w = tf.ones([2, 8, 8, 4]), v1.get_variable("w", [3, 3, 4, 4])
    grads = tf.gradients(tf.reduce_sum(tf.nn.conv2d(x, w, 1, "SAME")), [x, w])
    with v1.Session() as session:
        session.run(v1.global_variables_initializer())
        traced = v1.RunMetadata()
        options = v1.RunOptions(trace_level=v1.RunOptions.FULL_TRACE)
        session.run(grads, options=options, run_metadata=traced)
for device in traced.step_stats.dev_stats:
    for node in device.node_stats:
        print(node.timeline_label.split("(")[0].split("=")[-1].strip())
"""


@pytest.mark.skipif(compat.TF1, reason="TF 1.15 has no oneDNN switch")
@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="oneDNN's x86 switch"
)
@pytest.mark.parametrize(
    "chosen, kernel",
    [(None, "_MklNativeConv2DBackpropInput"), ("0", "Conv2DBackpropInput")],
)
def test_onednn_kernels_on_every_x86_cpu_unless_the_user_chose(chosen, kernel):
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if chosen is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = chosen
    proc = subprocess.run(
        [sys.executable, "-c", KERNELS], capture_output=True, text=True, env=env, timeout=300,
        cwd=REPO_ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert kernel in proc.stdout.split(), proc.stdout


def test_map_fn_maps_tuples_to_the_types_given_on_both_stacks():
    def fn(element):
        word, number = element
        return tf.strings.length(word), number * 2.0

    graph = tf.Graph()
    with graph.as_default():  # as in a tf.data function: a graph, on both stacks
        elements = (tf.constant(["a", "bcd"]), tf.constant([1.5, -2.0]))
        mapped = compat.map_fn(fn, elements, (tf.int32, tf.float32))
        with compat.v1.Session(graph=graph) as session:
            lengths, doubled = session.run(mapped)
    assert lengths.tolist() == [1, 3] and doubled.tolist() == [3.0, -4.0]


def _counter_graph():
    """A graph with a variable bumped by a fed amount (default 1), a flag, an op, and a check
    that fails beyond 100."""
    graph = tf.Graph()
    with graph.as_default():
        amount = compat.v1.placeholder_with_default(tf.constant(1, tf.int64), [], "amount")
        flag = compat.v1.placeholder_with_default(False, [], "flag")
        total = compat.v1.Variable(0, dtype=tf.int64)
        bump = compat.v1.assign_add(total, amount)
        with tf.control_dependencies([bump]):
            fetches = {
                "total": total.read_value(),
                "half": tf.cast(total.read_value(), tf.float32) / 2,
                "flag": tf.logical_not(flag),
                "root": tf.debugging.check_numerics(
                    tf.sqrt(100.0 - tf.cast(total, tf.float32)), ""
                ),
                "op": tf.group(bump),
            }
        init = compat.v1.global_variables_initializer()
    return graph, init, fetches, [amount, flag]


@pytest.mark.parametrize("through_run", [False, True])
def test_session_call_returns_what_session_run_returns_with_the_same_feeds(through_run):
    graph, init, fetches, feeds = _counter_graph()
    with compat.v1.Session(graph=graph) as session:
        session.run(init)
        call = compat.SessionCall(session, fetches, feeds, through_run)
        out = call(3, True)
        assert set(out) == set(fetches) and out["op"] is None
        assert (type(out["total"]), out["total"]) == (np.int64, 3)
        assert (type(out["half"]), out["half"]) == (np.float32, 1.5)
        assert (type(out["flag"]), out["flag"]) == (np.bool_, False)
        by_run = session.run(fetches, dict(zip(feeds, [2, False])))
        assert by_run["total"] == 5 and call(1, False)["total"] == 6
        assert {k: type(v) for k, v in by_run.items()} == {k: type(v) for k, v in out.items()}


def test_session_call_raises_the_ops_error_and_takes_values_of_the_feeds_types():
    graph, init, fetches, feeds = _counter_graph()
    with compat.v1.Session(graph=graph) as session:
        session.run(init)
        call = compat.SessionCall(session, fetches, feeds)
        assert call(np.int32(40), 0)["total"] == 40  # converted to the placeholder's int64
        with pytest.raises(tf.errors.InvalidArgumentError):
            call(200, False)


def _threads_started_by(action) -> int:
    """Threads of this process that ``action`` started (and that still run after it)."""
    before = set(os.listdir("/proc/self/task"))
    action()
    return len(set(os.listdir("/proc/self/task")) - before)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc")
def test_each_session_gets_the_thread_pools_its_config_names():
    """--intra_op_threads and --inter_op_threads reach every session of a run, not only the
    first, and not only before TF 2's eager context has made its devices (building a graph
    with control flow makes them)."""
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [])
        y = tf.cond(x > 0, lambda: x * 2, lambda: x)
    sessions = []

    def run(intra: int, inter: int):
        session = v1.Session(graph=graph, config=compat.session_config(intra, inter, False))
        sessions.append(session)
        session.run(y, {x: 1.0})

    try:
        assert _threads_started_by(lambda: run(2, 3)) >= 2 + 3
        assert _threads_started_by(lambda: run(1, 4)) >= 1 + 4
    finally:
        for session in sessions:
            session.close()
