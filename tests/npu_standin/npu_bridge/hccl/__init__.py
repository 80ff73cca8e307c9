"""Test stand-in for ``npu_bridge.hccl`` (see ``npu_bridge/__init__.py``): ``hccl_ops``."""
