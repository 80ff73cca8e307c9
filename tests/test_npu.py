"""The Ascend adapter without Ascend: its session config as a protobuf, the rules it imposes,
and the message where npu_bridge is missing."""

from __future__ import annotations

import re

import pytest

from vgg_keras import compat, distribute, npu, training
from vgg_keras.compat import tf, v1
from vgg_keras.config import make_config
from vgg_keras.data import pipeline
from vgg_keras.errors import UsageError


def test_session_config_hands_the_graph_to_the_npu_optimizer():
    base = compat.session_config(intra_op_threads=4)
    config = npu.session_config(base, precision="fp16", iterations_per_loop=10)
    rewrite = config.graph_options.rewrite_options
    (custom,) = rewrite.custom_optimizers
    assert custom.name == "NpuOptimizer"
    params = custom.parameter_map
    assert params["use_off_line"].b is True
    assert params["mix_compile_mode"].b is False
    assert params["enable_data_pre_proc"].b is True
    assert params["iterations_per_loop"].i == 10
    assert params["hcom_parallel"].b is True
    assert params["precision_mode"].s == b"allow_mix_precision"
    assert rewrite.remapping == rewrite.OFF
    assert rewrite.memory_optimization == rewrite.OFF
    # The CPU/GPU settings it started from are kept, and the original is left alone.
    assert config.allow_soft_placement and config.intra_op_parallelism_threads == 4
    assert not base.graph_options.rewrite_options.custom_optimizers
    # A round trip through bytes: this is what the session receives.
    assert v1.ConfigProto.FromString(config.SerializeToString()) == config


def test_fp32_keeps_the_devices_default_precision_mode():
    params = npu.session_config(v1.ConfigProto(), precision="fp32").graph_options
    params = params.rewrite_options.custom_optimizers[0].parameter_map
    assert "precision_mode" not in params
    assert params["iterations_per_loop"].i == 1


def test_without_npu_bridge_distribution_npu_is_a_one_line_usage_error(
    script_runner, demo_dir, tmp_path
):
    if compat.npu_available():
        pytest.skip("npu_bridge is installed here")
    proc = script_runner(
        "run_train.py", "--preset", "demo", "--data_dir", demo_dir, "--log_dir", tmp_path / "run",
        "--distribution", "npu",
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --distribution npu: npu_bridge is not importable (install the Ascend CANN "
        "TensorFlow adapter, or choose another --distribution)"
    ]
    assert not (tmp_path / "run").exists()


def _npu(rank_size: int = 8, rank_id: int = 3) -> distribute.Distribution:
    """An Ascend Distribution as create() makes it, without needing npu_bridge."""
    return distribute.Npu(
        tf.distribute.get_strategy(),
        num_replicas=rank_size,
        num_workers=rank_size,
        worker_index=rank_id,
        is_chief=rank_id == 0,
    )


def test_on_ascend_the_graph_stays_fp32_and_each_rank_evaluates_everything():
    dist = _npu()
    assert dist.model_precision("fp16") == "fp32"  # precision_mode mixes on the device
    assert dist.in_sync == 1  # NPUDistributedOptimizer averages: the loss is not divided
    evaluating = dist.for_evaluation()
    assert (evaluating.num_workers, evaluating.worker_index) == (1, 0)
    split = pipeline.Split("validation", ("a", "b"), (30, 20))
    assert evaluating.eval_steps(split, 10) == 5


@pytest.mark.parametrize(
    ("overrides", "interval"),
    [
        ({"max_train_steps": 25, "save_checkpoints_steps": 10}, "steps interval (25 steps)"),
        ({"max_train_steps": 30, "save_checkpoints_steps": 15}, "save interval (15 steps)"),
    ],
)
def test_the_device_loop_needs_intervals_that_are_multiples_of_it(overrides, interval):
    config = make_config(
        "demo", data_dir="unused", mode="train", iterations_per_loop=10, **overrides
    )
    plan = training.plan_run(config, train_images=1437, num_replicas=8)
    with pytest.raises(
        UsageError, match=re.escape(f"--iterations_per_loop 10: on Ascend the {interval}")
    ):
        _npu().check_intervals(10, _intervals(plan))
    distribute.single_device().check_intervals(10, _intervals(plan))  # elsewhere: fine


def _intervals(plan) -> dict:
    return {"steps": plan.max_steps, "save": plan.save_every, "eval": plan.eval_every}


def test_the_device_loop_refuses_a_log_interval_shorter_than_it():
    """--display_every 1 (the reference's default) with a 10-step device loop: one line."""
    config = make_config(
        "demo", data_dir="unused", mode="train", max_train_steps=100, save_checkpoints_steps=50,
        display_every=5, iterations_per_loop=10,
    )  # fmt: skip
    plan = training.plan_run(config, train_images=1437, num_replicas=8)
    with pytest.raises(UsageError, match=re.escape("on Ascend the log interval (5 steps)")):
        _npu().check_intervals(10, training.loop_intervals(config, plan))
    distribute.single_device().check_intervals(10, training.loop_intervals(config, plan))
