#!/usr/bin/env python
"""Evaluate VGG checkpoints: top-1, top-5 and loss over every validation image.

``python run_eval.py --ckpt runs/demo`` evaluates the newest checkpoint of a run;
``python run_eval.py --eval_dir runs/demo`` every one of them in step order;
``python run_eval.py --all-ckpts`` every one of the newest run under runs/;
``--watch`` keeps evaluating new ones as a running training writes them.  Settings come from
the run's config.json; flags override them.  ``make eval`` runs it on the demo run.
"""

import sys

from vgg_keras.errors import run_cli


def main(argv=None) -> int:
    from vgg_keras import cli

    args = cli.eval_parser().parse_args(argv)
    # TensorFlow is imported only now, so a bad flag is reported at once, not after seconds.
    from vgg_keras import evaluation

    return evaluation.run(args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
