#!/usr/bin/env python
"""Export a trained VGG: ``python run_export.py --ckpt runs/demo --format savedmodel --output DIR``.

Formats (comma-separated): savedmodel (JPEG bytes in), keras (.h5 + .keras), frozen_graph
(input ``input``, output ``logits``, for the Ascend offline converter), checkpoint.  See
vgg_keras/export.py.
"""

from vgg_keras import commands

if __name__ == "__main__":
    commands.exit_now(commands.main("export"))  # the same program as the console script vgg-export
