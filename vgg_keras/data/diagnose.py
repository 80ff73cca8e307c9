"""The documented ``python -m vgg_keras.data.diagnose``; its code is vgg_keras/tools/diagnose.py."""

from vgg_keras.errors import run_cli
from vgg_keras.tools.diagnose import main

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
