#!/usr/bin/env python
"""Train VGG16/VGG19: ``python run_train.py --data_dir /path/to/tfrecords [flags]``.

``python run_train.py --preset demo`` trains a width-scaled VGG16 on the embedded digits
dataset (built on first use) to >= 97% top-1 in a few minutes on two CPU cores.
"""

import sys

from vgg_keras.commands import train_main
from vgg_keras.errors import run_cli

main = train_main  # the same entry point as the console script vgg-train

if __name__ == "__main__":
    sys.exit(run_cli(main))
