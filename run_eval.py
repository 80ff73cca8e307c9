#!/usr/bin/env python
"""Evaluate VGG checkpoints: top-1, top-5 and loss over every validation image.

``python run_eval.py --ckpt runs/demo`` evaluates the newest checkpoint of a run;
``python run_eval.py --eval_dir runs/demo`` every one of them in step order;
``python run_eval.py --all-ckpts`` every one of the newest run under runs/;
``--watch`` keeps evaluating new ones as a running training writes them.  Settings come from
the run's config.json; flags override them.  ``make eval`` runs it on the demo run.
"""

from vgg_keras import commands

if __name__ == "__main__":
    commands.exit_now(commands.main("eval"))  # the same program as the console script vgg-eval
