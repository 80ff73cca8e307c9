"""Test stand-in for ``npu_bridge.estimator.npu`` (see ``npu_bridge/__init__.py``): a
namespace for ``util``, ``npu_optimizer``, ``npu_loss_scale_optimizer`` and
``npu_loss_scale_manager``."""
