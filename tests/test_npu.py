"""The Ascend adapter without Ascend: its session config as a protobuf, the rules it imposes,
and the message where npu_bridge is missing."""

from __future__ import annotations

import re

import pytest
from conftest import demo_config

from vgg_keras import clock, compat, distribute, npu
from vgg_keras.compat import tf, v1
from vgg_keras.data import pipeline
from vgg_keras.errors import UsageError


def test_session_config_hands_the_graph_to_the_npu_optimizer():
    base = compat.session_config(4, 0, False)
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


def test_on_ascend_each_rank_evaluates_everything_undivided():
    dist = _npu()
    assert dist.in_sync == 1  # NPUDistributedOptimizer averages: the loss is not divided
    evaluating = dist.for_evaluation()
    assert (evaluating.num_workers, evaluating.worker_index) == (1, 0)
    split = pipeline.Split("validation", ("a", "b"), (30, 20))
    assert evaluating.eval_steps(split, 10) == 5


@pytest.mark.parametrize(
    ("asked", "mode"),
    [("fp32", None), ("fp16", b"allow_mix_precision"), ("bf16", b"allow_mix_precision_bf16")],
)
def test_on_ascend_every_graph_is_fp32_and_the_session_asks_the_device_to_mix(
    asked, mode, monkeypatch
):
    """--precision on Ascend is the device's precision_mode: the training and evaluation graphs
    are built in float32 (the Keras policy training.train gives both), the session config
    carries the mode."""
    # The one thing this host lacks for create() to make the Ascend distribution (nothing of it
    # imports npu_bridge until a graph is built).
    monkeypatch.setattr(compat, "npu_available", lambda: True)
    config = demo_config(data_dir="unused", distribution="npu", precision=asked)
    dist = distribute.create(config)
    assert isinstance(dist, distribute.Npu) and dist.kind == "npu"
    assert dist.precision(config.network.precision) == "fp32"  # training's graph
    assert dist.for_evaluation().precision(config.network.precision) == "fp32"  # evaluation's
    base = compat.session_config(0, 0, False)
    params = dist.configure_session(base).graph_options.rewrite_options
    params = params.custom_optimizers[0].parameter_map
    if mode is None:  # fp32: the device's default mode
        assert "precision_mode" not in params
    else:
        assert params["precision_mode"].s == mode
    assert params["iterations_per_loop"].i == config.loop.iterations_per_loop
    # Elsewhere the graphs take the precision asked for.
    assert distribute.single_device().precision(asked) == asked


def _plan(num_replicas: int = 8, **settings) -> clock.Plan:
    """The plan of a demo run (1437 training images; 8 ranks: 5 steps per epoch)."""
    config = demo_config(data_dir="unused", **{"mode": "train", **settings})
    return clock.plan(config, train_images=1437, num_replicas=num_replicas)


@pytest.mark.parametrize(
    ("settings", "interval"),
    [
        ({"max_train_steps": 25, "save_checkpoints_steps": 10}, "steps interval (25 steps)"),
        ({"max_train_steps": 30, "save_checkpoints_steps": 15}, "save interval (15 steps)"),
        # The default save interval is an epoch: 1437 // 256 = 5 steps.
        ({"max_train_steps": 30}, "save interval (5 steps)"),
        (
            {"max_train_steps": 30, "save_checkpoints_steps": 10, "display_every": 10,
             "mode": "train_and_evaluate", "epochs_between_evals": 3.0},
            "evaluate interval (15 steps)",
        ),
    ],
)  # fmt: skip
def test_the_device_loop_needs_intervals_that_are_multiples_of_it(settings, interval):
    plan = _plan(iterations_per_loop=10, **settings)
    with pytest.raises(
        UsageError, match=re.escape(f"--iterations_per_loop 10: on Ascend the {interval}")
    ):
        _npu().check_plan(plan)
    distribute.single_device().check_plan(plan)  # elsewhere: calls are cut short, fine
    with pytest.raises(UsageError, match=re.escape(interval)):
        plan.check_fixed_calls()


def test_the_device_loop_refuses_a_log_interval_shorter_than_it():
    """--display_every 1 (the reference's default) with a 10-step device loop: one line."""
    plan = _plan(
        max_train_steps=100, save_checkpoints_steps=50, display_every=5, iterations_per_loop=10
    )
    with pytest.raises(UsageError, match=re.escape("on Ascend the log interval (5 steps)")):
        _npu().check_plan(plan)
    distribute.single_device().check_plan(plan)


def test_the_device_loop_takes_intervals_that_are_multiples_of_it():
    plan = _plan(
        max_train_steps=100, save_checkpoints_steps=50, display_every=10,
        mode="train_and_evaluate", epochs_between_evals=4.0, iterations_per_loop=10,
    )  # fmt: skip
    assert plan.every == {"log": 10, "save": 50, "evaluate": 20}
    _npu().check_plan(plan)
    # One step per call: any interval.
    _npu().check_plan(
        _plan(max_train_steps=7, save_checkpoints_steps=3, display_every=1, iterations_per_loop=1)
    )


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({"RANK_ID": "1", "RANK_TABLE_FILE": "8p.json"}, "--rank_size 8: set RANK_SIZE"),
        (
            {"RANK_ID": "1", "RANK_SIZE": "4", "RANK_TABLE_FILE": "8p.json"},
            "RANK_SIZE '4' differs from --rank_size 8",
        ),
    ],
)
def test_several_ranks_need_rank_size_set_as_npu_bridge_reads_it(environment, message, monkeypatch):
    """NPUDistributedOptimizer takes the number of ranks it averages over from RANK_SIZE."""
    monkeypatch.setattr(compat, "npu_available", lambda: True)
    for name in ("RANK_ID", "RANK_SIZE", "RANK_TABLE_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    config = demo_config(data_dir="unused", distribution="npu", rank_size=8)
    with pytest.raises(UsageError, match=re.escape(message)):
        distribute.create(config)
    monkeypatch.setenv("RANK_SIZE", "8")
    assert distribute.create(config).worker_index == 1
