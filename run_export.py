#!/usr/bin/env python
"""Export a trained VGG: ``python run_export.py --ckpt runs/demo --format savedmodel --output DIR``.

Formats (comma-separated): savedmodel (JPEG bytes in), keras (.h5 + .keras), frozen_graph
(input ``input``, output ``logits``, for the Ascend offline converter), checkpoint.  See
vgg_keras/export.py.
"""

import sys

from vgg_keras.commands import export_main
from vgg_keras.errors import run_cli

main = export_main  # the same entry point as the console script vgg-export

if __name__ == "__main__":
    sys.exit(run_cli(main))
