"""Test stand-in for Huawei's ``npu_bridge`` (the CANN TensorFlow adapter), for CPU-only hosts.

It lives under ``tests/npu_standin`` and is importable only by the tests that put that folder
on ``sys.path`` / ``PYTHONPATH``.  It reproduces, on the CPU, the part of the adapter's public
Python API that ``vgg_keras/npu.py`` uses: the same modules, names and signatures, and the
documented behaviour (loop sinking, HCCL collectives between rank processes, loss scaling with
overflow skipping).  Like the real package, importing it has no effect on TensorFlow: the
real adapter's graph passes read the session config's ``NpuOptimizer`` entry, which plain
TensorFlow accepts and ignores (an unknown custom optimizer name is skipped by grappler).
Nothing here compiles graphs for a device, emulates precision modes or sinks the input
pipeline.
"""

from npu_bridge.hccl import hccl_ops  # noqa: F401  (the real package imports it too)
