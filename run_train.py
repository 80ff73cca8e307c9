#!/usr/bin/env python
"""Train VGG16/VGG19: ``python run_train.py --data_dir /path/to/tfrecords [flags]``.

``python run_train.py --preset demo`` trains a width-scaled VGG16 on the embedded digits
dataset (built on first use) to >= 97% top-1 in a few minutes on two CPU cores.
"""

from vgg_keras import commands

if __name__ == "__main__":
    commands.exit_now(commands.main("train"))  # the same program as the console script vgg-train
