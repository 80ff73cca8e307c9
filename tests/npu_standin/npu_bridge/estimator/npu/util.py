"""Test stand-in for ``npu_bridge.estimator.npu.util``: loop sinking's iteration variables.

What the real module does: ``create_iteration_per_loop_var(train_op)`` creates the int64
resource variables ``npu_runconfig/iterations_per_loop``, ``loop_cond``, ``zero`` and ``one``
(local variables, each in a collection of its own) and returns ``train_op`` grouped as an op
named ``IterationOp``; ``load_iteration_per_loop_var(sess, n)`` loads ``n - 1`` into the first
(and 0, 0, 1 into the others) through the variables' initializers.  The device does the rest:
when the session config's ``NpuOptimizer`` has ``iterations_per_loop`` > 1, a ``Session.run``
that includes ``IterationOp`` runs the graph ``npu_runconfig/iterations_per_loop + 1`` times
before it returns (the config's value switches loop sinking on; Huawei's examples give both
the same value).

The stand-in does the device's part on the CPU: ``load_iteration_per_loop_var`` also gives that
session a ``run`` that repeats such a call as many times as the variable says, reading it from
the session each time (as the device reads it), and returns the last run's fetches.  A
``tf.while_loop`` cannot stand in here: it would have to rebuild the already-built train op in
its body; and only sessions given to ``load_iteration_per_loop_var`` change, so importing the
stand-in leaves every other session of a process alone.  Where the session config and the loaded count disagree the stand-in raises, so
that a test notices.  If ``NPU_STANDIN_TRACE`` names a file, every device loop
appends its number of steps to it, one line each, for tests to read.
"""

from __future__ import annotations

import os

import tensorflow as tf

v1 = tf.compat.v1

_NPU_RUNCONFIG = "npu_runconfig"
_ITERATIONS_PER_LOOP_VAR = "iterations_per_loop"
_LOOP_COND_VAR = "loop_cond"
_CONST_ZERO = "zero"
_CONST_ONE = "one"


def check_positive_integer(value, name):
    """Raises TypeError unless ``value`` is an int, ValueError unless it is positive."""
    if not isinstance(value, int):
        raise TypeError(f"{name} must be int, got {type(value)}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


def create_or_get_var(var_name):
    """The graph's ``npu_runconfig/<var_name>`` variable, created on first use."""
    graph = v1.get_default_graph()
    collection = f"{_NPU_RUNCONFIG}_{var_name}"
    found = graph.get_collection(collection)
    if len(found) > 1:
        raise RuntimeError("Multiple var in collection.")
    if found:
        return found[0]
    with v1.variable_scope(_NPU_RUNCONFIG, reuse=v1.AUTO_REUSE):
        return v1.get_variable(
            var_name,
            shape=[],
            dtype=tf.int64,
            initializer=v1.zeros_initializer(),
            trainable=False,
            collections=[collection, v1.GraphKeys.LOCAL_VARIABLES],
            use_resource=True,
        )


def _npu_iterations(session) -> int:
    """The session config's NpuOptimizer iterations_per_loop (1 without one)."""
    config = getattr(session, "_config", None)  # BaseSession keeps the ConfigProto it was given
    if config is None:
        return 1
    for custom in config.graph_options.rewrite_options.custom_optimizers:
        if custom.name == "NpuOptimizer" and "iterations_per_loop" in custom.parameter_map:
            return custom.parameter_map["iterations_per_loop"].i
    return 1


def _fetched(fetches, op) -> bool:
    for item in tf.nest.flatten(fetches):
        if item is op or (isinstance(item, str) and item.split(":")[0] == op.name):
            return True
    return False


class _Device:
    """A session's run, repeated for every call that fetches one of the loop ops."""

    def __init__(self, session):
        self.session = session
        self.run_once = session.run
        self.loops = {}  # IterationOp -> its iterations_per_loop variable
        session.run = self.run

    def run(self, fetches, feed_dict=None, options=None, run_metadata=None):
        looped = [op for op in self.loops if _fetched(fetches, op)]
        if not looped or _npu_iterations(self.session) <= 1:
            return self.run_once(fetches, feed_dict, options, run_metadata)
        steps = int(self.run_once(self.loops[looped[0]])) + 1
        for _ in range(steps):
            result = self.run_once(fetches, feed_dict, options, run_metadata)
        trace = os.environ.get("NPU_STANDIN_TRACE")
        if trace:
            with open(trace, "a", encoding="utf-8") as f:
                f.write(f"{steps}\n")
        return result


def set_iteration_per_loop(sess, train_op, iterations_per_loop=1):
    """Create and load the loop variables in one call (for graphs not yet finalized)."""
    check_positive_integer(iterations_per_loop, "iterations_per_loop")
    if iterations_per_loop == 1:
        return train_op
    looper = IterationPerLoop()
    op = looper.create_iteration_per_loop_var(train_op)
    looper.load_iteration_per_loop_var(sess, iterations_per_loop)
    return op


class IterationPerLoop:
    """An object provide two API to create and set iterations_per_loop."""

    def create_iteration_per_loop_var(self, train_op):
        """``train_op`` grouped as ``IterationOp``; creates the loop variables."""
        if not isinstance(train_op, tf.Operation):
            raise ValueError(
                f"The incoming 'train_op' type is '{type(train_op).__name__}', and the need type is "
                "'Operation'"
            )
        self._iterations_per_loop_var = create_or_get_var(_ITERATIONS_PER_LOOP_VAR)
        self._loop_cond_var = create_or_get_var(_LOOP_COND_VAR)
        self._const_zero = create_or_get_var(_CONST_ZERO)
        self._const_one = create_or_get_var(_CONST_ONE)
        self._op = tf.group(train_op, name="IterationOp")
        return self._op

    def load_iteration_per_loop_var(self, sess, iterations_per_loop=1):
        """Load ``iterations_per_loop - 1`` (and the loop's constants) into ``sess``."""
        check_positive_integer(iterations_per_loop, "iterations_per_loop")
        configured = _npu_iterations(sess)
        if configured > 1 and configured != iterations_per_loop:
            raise ValueError(
                f"iterations_per_loop {iterations_per_loop} differs from the session config's NpuOptimizer "
                f"iterations_per_loop {configured}"
            )
        self._iterations_per_loop_var.load(iterations_per_loop - 1, session=sess)
        self._loop_cond_var.load(0, session=sess)
        self._const_zero.load(0, session=sess)
        self._const_one.load(1, session=sess)
        device = sess.run.__self__ if isinstance(sess.run.__self__, _Device) else _Device(sess)
        device.loops[self._op] = self._iterations_per_loop_var
