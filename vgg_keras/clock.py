"""The loop's clock: a run's step arithmetic, what is due at a step, how far a call may run.

One meaning for logging, saving and evaluating: an event is due at the first step that reaches
or passes a multiple of its interval since the event last happened, and at the run's last
step.  A session call never runs past the next step at which anything is due, so on CPU and GPU
events happen exactly at the multiples; on Ascend the device runs a fixed number of steps per
call, and ``check_fixed_calls`` asks for intervals that are multiples of it.

Steps per epoch are the training images // the global batch, as the reference counts them
(5,004 for ImageNet at 256), and recorded in the run's config.json.
"""

from __future__ import annotations

import dataclasses

from vgg_keras.config import Config
from vgg_keras.errors import UsageError

IMAGENET_TRAIN_IMAGES = 1_281_167  # epoch length for --synthetic without a dataset
EVENTS = ("log", "save", "evaluate")


@dataclasses.dataclass(frozen=True)
class Plan:
    """The resolved plan of one run, derived once from its config, its dataset's size and its
    devices: the training loop takes the batch layout, the step arithmetic and the precision
    from here rather than from the flags."""

    train_images: int
    global_batch: int  # replicas x replica_batch
    steps_per_epoch: int
    max_steps: int
    call_steps: int  # --iterations_per_loop
    every: dict  # {event: interval in steps, or None for never}
    replicas: int = 1
    micro_batches: int = 1  # --accumulation_steps
    precision: str = "fp32"  # resolved for the devices (dist.precision)

    @property
    def replica_batch(self) -> int:
        """One replica's images of one optimizer step: its micro-batches of --batch_size."""
        return self.global_batch // self.replicas

    def epoch(self, step: int) -> float:
        return step / self.steps_per_epoch

    def due(self, event: str, since: int, step: int) -> bool:
        """Whether ``event`` is due at ``step`` when it last happened at step ``since``."""
        every = self.every[event]
        if every is None or step <= since:
            return False
        return step >= self.max_steps or step // every > since // every

    def call_length(self, step: int) -> int:
        """Steps the next session call may run from ``step``: up to --iterations_per_loop,
        never past the end or the next multiple of an interval."""
        ahead = [(step // every + 1) * every - step for every in self.every.values() if every]
        return max(1, min([self.call_steps, self.max_steps - step, *ahead]))

    def recorded(self) -> dict:
        """What config.json records of the run (evaluation reads the epochs from it)."""
        return {
            "steps_per_epoch": self.steps_per_epoch,
            "global_batch": self.global_batch,
            "train_images": self.train_images,
        }

    def check_fixed_calls(self) -> None:
        """Where every call runs exactly --iterations_per_loop steps (Ascend's device loop),
        every interval must be a multiple of it, or a checkpoint or an evaluation is skipped."""
        n = self.call_steps
        for name, every in {"steps": self.max_steps, **self.every}.items():
            if n > 1 and every and every % n:
                raise UsageError(
                    f"--iterations_per_loop {n}: on Ascend the {name} interval ({every} steps) "
                    "must be a multiple of it"
                )


def steps_per_epoch(train_images: int, global_batch: int) -> int:
    return max(1, train_images // global_batch)


def plan(
    config: Config, train_images: int | None, num_replicas: int = 1, precision: str = ""
) -> Plan:
    """The Plan of ``config`` over ``train_images`` (None: --synthetic without data, an
    ImageNet-sized epoch) on ``num_replicas``, in ``precision`` (--precision by default)."""
    loop = config.loop
    images = IMAGENET_TRAIN_IMAGES if train_images is None else train_images
    micro_batches = config.optimizer.accumulation_steps
    global_batch = config.input.batch_size * num_replicas * micro_batches
    per_epoch = steps_per_epoch(images, global_batch)
    max_steps = loop.max_train_steps or max(1, round(loop.max_epochs * per_epoch))
    evaluate = None
    if loop.mode == "train_and_evaluate" and train_images is not None:
        evaluate = max(1, round(loop.epochs_between_evals * per_epoch))
    every = {
        "log": loop.display_every,
        "save": loop.save_checkpoints_steps or per_epoch,
        "evaluate": evaluate,
    }
    layout = {"replicas": num_replicas, "micro_batches": micro_batches}
    precision = precision or config.network.precision
    calls = loop.iterations_per_loop
    return Plan(
        images, global_batch, per_epoch, max_steps, calls, every, **layout, precision=precision
    )
