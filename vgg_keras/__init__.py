"""VGG16/VGG19 ImageNet training and evaluation on TensorFlow (tf.keras model, v1 Session loop)."""

__version__ = "0.1.0"
