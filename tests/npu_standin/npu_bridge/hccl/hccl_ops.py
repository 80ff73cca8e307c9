"""Test stand-in for ``npu_bridge.hccl.hccl_ops``: HCCL collectives between rank processes.

The real functions add HcomAllReduce / HcomBroadcast / HcomAllGather ops that the device runs
over HCCL.  Here each is a ``tf.compat.v1.py_func`` that exchanges numpy arrays with the other
ranks through ``_transport`` (rank 0's hub on this host), with the same signatures and results:
``allreduce`` returns one tensor reduced over the ranks, ``broadcast`` a list holding the root
rank's values of the list it was given, ``allgather`` the ranks' tensors concatenated along the
first axis.  ``fusion``, ``fusion_id`` and ``group`` are accepted and ignored (one world group,
no fusion of buffers).

HCCL needs every rank to issue its collectives in the same order; on the device the compiled
graph fixes that order.  TensorFlow's executor may start independent ops in any order, and a
collective blocks a thread of the session's pool while it waits for its peers, so the stand-in
fixes the order itself: each collective waits (a control dependency) for the previous one of
the same kind created in the same graph and control-flow context.
"""

from __future__ import annotations

import weakref

import tensorflow as tf

from npu_bridge.hccl import _transport

v1 = tf.compat.v1
_chains: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # graph -> {(ctx, kind): op}


def _py_collective(kind: str, detail, tensors: list, name: str) -> list:
    """One py_func op running ``kind`` over ``tensors``; its outputs, shaped as given."""
    graph = v1.get_default_graph()
    context = graph._get_control_flow_context()  # private: there is no public accessor
    chains = _chains.setdefault(graph, {})
    previous = chains.get((id(context), kind))
    tensors = [tf.convert_to_tensor(t) for t in tensors]
    holder = {}

    def run(*values):
        op_name = holder["name"]
        return [
            _transport.collective(kind, detail, f"{op_name}:{i}", value)
            for i, value in enumerate(values)
        ]

    with graph.control_dependencies([previous] if previous is not None else []):
        outputs = v1.py_func(run, tensors, [t.dtype for t in tensors], name=name)
    holder["name"] = outputs[0].op.name
    chains[(id(context), kind)] = outputs[0].op
    return outputs


def allreduce(tensor, reduction, fusion=1, fusion_id=-1, group="hccl_world_group"):
    """``tensor`` reduced (``reduction``: "sum", "prod", "max" or "min") over every rank."""
    if reduction not in ("sum", "prod", "max", "min"):
        raise ValueError(f"reduction must be sum, prod, max or min, got {reduction!r}")
    tensor = tf.convert_to_tensor(tensor)
    (result,) = _py_collective("allreduce", reduction, [tensor], "HcomAllReduce")
    result.set_shape(tensor.shape)
    return result


def allgather(tensor, rank_size, group="hccl_world_group"):
    """Every rank's ``tensor`` concatenated along the first axis, in rank order."""
    tensor = tf.convert_to_tensor(tensor)
    (result,) = _py_collective("allgather", None, [tensor], "HcomAllGather")
    if tensor.shape.rank:
        first = tensor.shape[0] * rank_size if tensor.shape[0] is not None else None
        result.set_shape([first] + tensor.shape.as_list()[1:])
    return result


def broadcast(tensor, root_rank, fusion=2, fusion_id=0, group="hccl_world_group"):
    """``tensor`` (a list of tensors or variables) as rank ``root_rank`` has it: a list."""
    tensors = [tf.convert_to_tensor(t) for t in tensor]
    results = _py_collective("broadcast", int(root_rank), tensors, "HcomBroadcast")
    for result, given in zip(results, tensors):
        result.set_shape(given.shape)
    return results
