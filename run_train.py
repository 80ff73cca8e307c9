#!/usr/bin/env python
"""Train VGG16/VGG19: ``python run_train.py --data_dir /path/to/tfrecords [flags]``.

``python run_train.py --preset demo`` trains a width-scaled VGG16 on the embedded digits
dataset (built on first use) to >= 97% top-1 in a few minutes on two CPU cores.
"""

import subprocess
import sys

from vgg_keras.errors import run_cli


def main(argv=None) -> int:
    from vgg_keras import config as config_lib

    config = config_lib.from_args(argv)
    # TensorFlow is imported only now, so a bad flag is reported at once, not after seconds.
    from vgg_keras import evaluation, training

    if config.data_dir == config_lib.DEMO_DATA_DIR:
        from vgg_keras.data import demo

        if not demo.built_info(config.data_dir):
            # In a child process: TensorFlow's runtime here must stay unconfigured until the
            # distribution strategy has laid out the devices.
            subprocess.run(
                [sys.executable, "-m", "vgg_keras.data.demo", config.data_dir], check=True
            )
    if config.mode == "evaluate":
        return evaluation.evaluate_folder(config)
    return training.train(config)


if __name__ == "__main__":
    sys.exit(run_cli(main))
