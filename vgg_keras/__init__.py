"""VGG16/VGG19 ImageNet training and evaluation on TensorFlow (tf.keras model, v1 Session loop).

``from vgg_keras import train, evaluate, build_vgg`` (see ``vgg_keras/api.py``).  They are looked
up on first use (PEP 562), so ``import vgg_keras`` does not import TensorFlow.
"""

__version__ = "0.1.0"
__all__ = ["build_vgg", "evaluate", "train"]


def __getattr__(name: str):
    if name in __all__:
        from vgg_keras import api

        return getattr(api, name)
    raise AttributeError(f"module 'vgg_keras' has no attribute {name!r}")
