#!/usr/bin/env python
"""Classify images: ``python run_predict.py IMAGE... --ckpt runs/demo [--top 5] [--json]``.

IMAGE is a file, a folder (searched recursively) or a glob; the model is a checkpoint (--ckpt),
a SavedModel from run_export.py (--model) or a published Keras weight file (--weights
keras_imagenet:PATH).  See vgg_keras/predict.py.
"""

from vgg_keras import commands

if __name__ == "__main__":
    # The same program as the console script vgg-predict.
    commands.exit_now(commands.main("predict"))
