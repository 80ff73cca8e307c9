#!/usr/bin/env python
"""Classify images: ``python run_predict.py IMAGE... --ckpt runs/demo [--top 5] [--json]``.

IMAGE is a file, a folder (searched recursively) or a glob; the model is a checkpoint (--ckpt),
a SavedModel from run_export.py (--model) or a published Keras weight file (--weights
keras_imagenet:PATH).  See vgg_keras/predict.py.
"""

import sys

from vgg_keras.errors import run_cli


def main(argv=None) -> int:
    from vgg_keras import cli

    args = cli.predict_args(argv)
    # TensorFlow is imported only now, so a bad flag is reported at once, not after seconds.
    from vgg_keras import predict

    return predict.run(args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
