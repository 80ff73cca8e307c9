"""The Ascend wiring of ``npu.py`` run against the test stand-in of ``npu_bridge``
(tests/npu_standin): the device loop, the NPU's loss scaling, HCCL's broadcast and gradient
averaging.  The stand-in is importable only inside these tests (``npu_bridge`` fixture), or in
the subprocesses that get it on their PYTHONPATH, so that ``compat.npu_available()`` stays false
for every other test."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from vgg_keras import compat, npu
from vgg_keras.compat import tf, v1

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS)
STANDIN = os.path.join(TESTS, "npu_standin")


def standin_environment(**variables: str) -> dict:
    """This environment with the stand-in and the repository on PYTHONPATH, plus ``variables``."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([STANDIN, REPO_ROOT]), **variables}


@pytest.fixture
def npu_bridge():
    """The stand-in imported in this process for one test, then forgotten again."""
    if compat.npu_available():
        pytest.skip("the real npu_bridge is installed here: the stand-in would not replace it")
    sys.path.insert(0, STANDIN)
    importlib.invalidate_caches()
    try:
        yield importlib.import_module("npu_bridge")
    finally:
        sys.path.remove(STANDIN)
        for name in [m for m in sys.modules if m.split(".")[0] == "npu_bridge"]:
            del sys.modules[name]
        importlib.invalidate_caches()
    assert not compat.npu_available()


def _session(graph: tf.Graph, iterations_per_loop: int = 1, precision: str = "fp32"):
    """A session with the Ascend config, as distribute.Npu makes it; closed on leaving, but not
    made the default (training uses it that way: outside its graph, eager execution is on)."""
    config = npu.session_config(
        compat.session_config(1, 1, False),
        precision=precision,
        iterations_per_loop=iterations_per_loop,
    )
    return contextlib.closing(v1.Session(graph=graph, config=config))


def test_the_device_loop_runs_the_step_as_often_as_loaded_per_session_run(npu_bridge):
    graph = tf.Graph()
    with graph.as_default():
        step = v1.train.get_or_create_global_step()
        train_op = v1.assign_add(step, 1).op
        loop_op, load = npu.device_loop(train_op)
        init = v1.global_variables_initializer()
        (count,) = v1.get_collection("npu_runconfig_iterations_per_loop")
        assert loop_op.name == "IterationOp" and count in v1.local_variables()
    graph.finalize()  # as train_graph.build leaves it: loading must add no ops
    with _session(graph, iterations_per_loop=10) as session:
        session.run(init)
        load(session, 10)
        assert session.run(count) == 9  # the adapter stores n - 1
        assert session.run({"loop": loop_op})["loop"] is None  # fetches nest as usual
        assert session.run(step) == 10
        session.run(loop_op)
        assert session.run(step) == 20
        session.run(train_op)  # the step alone: once
        assert session.run(step) == 21
    # The session config and the loaded count must agree.
    with _session(graph, iterations_per_loop=10) as session:
        session.run(init)
        with pytest.raises(ValueError, match="iterations_per_loop 5 differs"):
            load(session, 5)


def _scaling_graph(rank_size: int):
    """w * x minimised by plain SGD (lr 0.5) through npu.wrap_optimizer for fp16."""
    graph = tf.Graph()
    with graph.as_default():
        step = v1.train.get_or_create_global_step()
        w = v1.Variable(1.0, name="w")
        x = v1.placeholder(tf.float32, [])
        optimizer = npu.wrap_optimizer(v1.train.GradientDescentOptimizer(0.5), "fp16", rank_size)
        pairs = optimizer.compute_gradients(w * x, [w])
        train_op = optimizer.apply_gradients(pairs, step)
        state = {v.op.name: v for v in v1.global_variables()}
        init = v1.global_variables_initializer()
    return graph, optimizer, x, train_op, init, state


def test_fp16_scales_the_loss_and_skips_steps_whose_gradients_overflow(npu_bridge):
    from npu_bridge.estimator.npu.npu_loss_scale_optimizer import NPULossScaleOptimizer

    graph, optimizer, x, train_op, init, state = _scaling_graph(rank_size=1)
    assert isinstance(optimizer, NPULossScaleOptimizer) and not optimizer._is_distributed
    assert isinstance(optimizer._opt, v1.train.GradientDescentOptimizer)  # no HCCL on one rank
    names = ("w", "global_step", "loss_scale", "good_steps", "bad_steps")
    with _session(graph, precision="fp16") as session:
        session.run(init)

        def after(value):
            session.run(train_op, {x: value})
            return tuple(session.run(state[name]).item() for name in names)

        assert after(1.0) == (0.5, 1, 2.0**32, 1, 0)
        # 1e30 is a finite gradient, but 1e30 times the scale 2^32 is not: the step is skipped
        # (global_step stays too), and the second such step halves the scale.
        assert after(1e30) == (0.5, 1, 2.0**32, 0, 1)
        assert after(1e30) == (0.5, 1, 2.0**31, 0, 0)
        assert after(2.0) == (-0.5, 2, 2.0**31, 1, 0)
    # fp32 and bf16 leave the optimizer alone on one rank: the device mixes precision itself.
    plain = v1.train.GradientDescentOptimizer(0.5)
    assert npu.wrap_optimizer(plain, "fp32", 1) is plain
    assert npu.wrap_optimizer(plain, "bf16", 1) is plain


def test_several_ranks_average_gradients_inside_the_loss_scaling(npu_bridge):
    from npu_bridge.estimator.npu.npu_loss_scale_optimizer import NPULossScaleOptimizer
    from npu_bridge.estimator.npu.npu_optimizer import NPUDistributedOptimizer

    _, optimizer, *_ = _scaling_graph(rank_size=8)
    assert isinstance(optimizer, NPULossScaleOptimizer) and optimizer._is_distributed
    averaging = optimizer._opt
    assert isinstance(averaging, NPUDistributedOptimizer)
    assert isinstance(averaging._optimizer, v1.train.GradientDescentOptimizer)
    plain = v1.train.GradientDescentOptimizer(0.5)
    assert isinstance(npu.wrap_optimizer(plain, "fp32", 8), NPUDistributedOptimizer)


# One rank of a two-rank job: rank-dependent initial values broadcast from rank 0, and the
# gradient of w * (rank + 1) averaged (1.5) through npu.wrap_optimizer, on an Ascend session.
TWO_RANKS = """
import json, os
import numpy as np
from vgg_keras import compat, npu
from vgg_keras.compat import tf, v1

rank = int(os.environ["RANK_ID"])
graph = tf.Graph()
with graph.as_default():
    weights = [
        v1.Variable(np.full([3], 10.0 * (rank + 1), np.float32), name="kernel"),
        v1.Variable(rank + 7, dtype=tf.int64, name="count"),
    ]
    broadcast = npu.broadcast_variables(weights)
    w = v1.Variable(1.0, name="w")
    optimizer = npu.wrap_optimizer(v1.train.GradientDescentOptimizer(1.0), "fp32", 2)
    ((grad, _),) = optimizer.compute_gradients(w * float(rank + 1), [w])
    train_op = optimizer.apply_gradients([(grad, w)])
    init = v1.global_variables_initializer()
config = npu.session_config(compat.session_config(1, 1, False))
with v1.Session(graph=graph, config=config) as session:
    session.run(init)
    session.run(broadcast)
    kernel, count = session.run(weights)
    gradient, _ = session.run([grad, train_op])
    print(json.dumps([kernel.tolist(), int(count), float(gradient), float(session.run(w))]))
"""


def test_two_ranks_broadcast_rank_0s_values_and_average_their_gradients(tmp_path):
    device = [{"device_id": str(i), "rank_id": str(i)} for i in (0, 1)]
    (tmp_path / "2p.json").write_text(json.dumps({"server_list": [{"device": device}]}))
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", TWO_RANKS],
            env=standin_environment(
                RANK_ID=str(rank), RANK_SIZE="2", RANK_TABLE_FILE=str(tmp_path / "2p.json")
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
        )
        for rank in (0, 1)
    ]
    results = []
    for proc in ranks:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    for kernel, count, gradient, w in results:
        np.testing.assert_array_equal(kernel, [10.0, 10.0, 10.0])
        assert count == 7
        assert gradient == 1.5 and w == -0.5
