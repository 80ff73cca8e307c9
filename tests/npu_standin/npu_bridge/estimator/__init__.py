"""Test stand-in for ``npu_bridge.estimator`` (see ``npu_bridge/__init__.py``): a namespace."""
