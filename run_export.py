#!/usr/bin/env python
"""Export a trained VGG: ``python run_export.py --ckpt runs/demo --format savedmodel --output DIR``.

Formats (comma-separated): savedmodel (JPEG bytes in), keras (.h5 + .keras), frozen_graph
(input ``input``, output ``logits``, for the Ascend offline converter), checkpoint.  See
vgg_keras/export.py.
"""

import sys

from vgg_keras.errors import run_cli


def main(argv=None) -> int:
    from vgg_keras import cli

    args = cli.export_args(argv)
    # TensorFlow is imported only now, so a bad flag is reported at once, not after seconds.
    from vgg_keras import export

    return export.run(args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
