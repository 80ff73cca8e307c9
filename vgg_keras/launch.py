"""The documented ``python -m vgg_keras.launch``; its code is vgg_keras/tools/launch.py."""

from vgg_keras.errors import run_cli
from vgg_keras.tools.launch import main

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
