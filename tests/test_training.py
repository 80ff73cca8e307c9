"""The Session loop: loop sinking equal to single steps, the exact stop step, resume (global_step,
LR, input stream, keep_checkpoint_max), a resume that changes precision, resuming the reference
implementation's checkpoints, the best checkpoint kept out of rotation, refusing another
configuration's log folder, and mixed precision.

Runs are real: a tiny VGG16 (width 0.0625, 32 px) on the demo TFRecords, real checkpoints.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import demo_config, stack_neutral, write_reference_checkpoint

from vgg_keras import arch, rundir, training
from vgg_keras.compat import gpu_count, tf, v1
from vgg_keras.errors import UsageError
from vgg_keras.reporting import read_metrics


def checkpoint_steps(log_dir) -> list[int]:
    return [rundir.checkpoint_step(p) for p in rundir.list_checkpoints(str(log_dir))]


def final_variables(log_dir) -> dict[str, np.ndarray]:
    """Every variable (weights, momentum slots, global_step) of the newest checkpoint."""
    reader = tf.train.load_checkpoint(rundir.latest_checkpoint(str(log_dir)))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def assert_same_variables(left: dict, right: dict) -> None:
    assert left.keys() == right.keys()
    for name in left:
        np.testing.assert_allclose(left[name], right[name], rtol=1e-6, atol=1e-7, err_msg=name)


# ---------------------------------------------------------------------------------------------
# Loop sinking


@pytest.fixture(scope="module")
def sunk_and_single(train_tiny, tmp_path_factory):
    """The same 7 steps run as single steps and as calls of 3 sunk steps (3 + 3 + 1)."""
    single, sunk = tmp_path_factory.mktemp("single"), tmp_path_factory.mktemp("sunk")
    assert train_tiny(single, max_train_steps=7, iterations_per_loop=1)[0] == 0
    assert train_tiny(sunk, max_train_steps=7, iterations_per_loop=3, display_every=3)[0] == 0
    return single, sunk


def test_sunk_steps_give_the_weights_of_single_steps(sunk_and_single):
    single, sunk = (final_variables(d) for d in sunk_and_single)
    # The comparison means something only if training moved the weights.
    assert np.abs(single["predictions/kernel/Momentum"]).max() > 1e-3
    assert_same_variables(single, sunk)


def test_sunk_run_stops_exactly_at_max_train_steps(sunk_and_single):
    single, sunk = sunk_and_single
    assert checkpoint_steps(single) == checkpoint_steps(sunk) == [7]
    assert [r["step"] for r in read_metrics(single)] == [1, 2, 3, 4, 5, 6, 7]
    assert [r["step"] for r in read_metrics(sunk)] == [3, 6, 7]
    # Each call reports its last step's values: the same as the single steps at 3, 6 and 7.
    by_step = {r["step"]: r for r in read_metrics(single)}
    for record in read_metrics(sunk):
        for key in ("loss", "total_loss", "lr"):
            assert record[key] == pytest.approx(by_step[record["step"]][key], rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Resume


@pytest.fixture(scope="module")
def resumed(train_tiny, tmp_path_factory):
    """6 steps, then a second invocation to 12 on the same log_dir, beside an uninterrupted 12.

    Calls of 2 sunk steps, a checkpoint every 2 steps, 2 kept, a log line every 2 steps.
    """
    settings = dict(
        iterations_per_loop=2, display_every=2, save_checkpoints_steps=2, keep_checkpoint_max=2
    )
    interrupted, straight = tmp_path_factory.mktemp("resumed"), tmp_path_factory.mktemp("straight")
    assert train_tiny(interrupted, max_train_steps=6, **settings)[0] == 0
    first_checkpoints = checkpoint_steps(interrupted)
    assert train_tiny(interrupted, max_train_steps=12, **settings)[0] == 0
    assert train_tiny(straight, max_train_steps=12, **settings)[0] == 0
    return interrupted, straight, first_checkpoints


def test_resume_continues_global_step_without_repeating_steps(resumed):
    interrupted, _, _ = resumed
    assert [r["step"] for r in read_metrics(interrupted)] == [2, 4, 6, 8, 10, 12]
    with open(os.path.join(interrupted, "train.log")) as f:
        assert f"resumed from {interrupted}/model.ckpt-6 at step 6" in f.read()


def test_resume_continues_the_learning_rate_and_the_input_stream(resumed):
    interrupted, straight, _ = resumed
    after, reference = read_metrics(interrupted), read_metrics(straight)
    assert [r["step"] for r in reference] == [r["step"] for r in after]
    # The demo's warmup raises the LR every step: a restarted global_step would show here.
    assert after[3]["lr"] > after[2]["lr"]
    for got, expected in zip(after, reference):
        # Same LR (the schedule at that global_step) and same loss (the same batch).
        assert got["lr"] == pytest.approx(expected["lr"], rel=1e-7), got["step"]
        assert got["loss"] == pytest.approx(expected["loss"], rel=1e-6), got["step"]


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(resumed):
    interrupted, straight, _ = resumed
    assert_same_variables(final_variables(interrupted), final_variables(straight))


def test_a_run_with_dropout_resumes_to_the_bits_of_an_uninterrupted_run(train_tiny, tmp_path):
    """The recipe's dropout (0.5): each step's masks come from (seed, step, replica), not from a
    generator whose state a restart loses.  Sunk calls (the loop's body) and a single step."""
    settings = dict(dropout=0.5, iterations_per_loop=3, display_every=3, save_checkpoints_steps=3)
    interrupted, straight = tmp_path / "interrupted", tmp_path / "straight"
    assert train_tiny(straight, max_train_steps=7, **settings)[0] == 0
    assert train_tiny(interrupted, max_train_steps=4, **settings)[0] == 0
    assert train_tiny(interrupted, max_train_steps=7, **settings)[0] == 0
    got, want = final_variables(interrupted), final_variables(straight)
    assert int(got["global_step"]) == 7 and got.keys() == want.keys()
    for name in want:
        assert np.array_equal(got[name], want[name]), name


def test_keep_checkpoint_max_holds_across_resume(resumed):
    interrupted, _, first_checkpoints = resumed
    assert first_checkpoints == [4, 6]
    assert checkpoint_steps(interrupted) == [10, 12]
    index_files = [n for n in os.listdir(interrupted) if n.endswith(".index")]
    assert sorted(index_files) == ["model.ckpt-10.index", "model.ckpt-12.index"]


def test_a_log_dir_holding_another_network_is_refused(resumed, demo_dir):
    interrupted, _, _ = resumed
    config = demo_config(
        data_dir=demo_dir, log_dir=str(interrupted), width_multiplier=0.125, mode="train"
    )
    with pytest.raises(UsageError, match=r"holds a run with width_multiplier=0\.0625"):
        training.train(config)
    assert checkpoint_steps(interrupted) == [10, 12], "nothing was touched"


# ---------------------------------------------------------------------------------------------
# Mixed precision


def test_bf16_run_trains_like_fp32(train_tiny, tmp_path):
    # The demo's loss leaves chance once its warmup epoch (44 steps) is over: 80 steps of the
    # 1/16-width net show bf16 learning (0.35 below its start here, on both stacks), held to
    # fp32's own curve rather than to a fixed drop.  bf16 is emulated where the CPU has none.
    losses = {}
    for precision in ("fp32", "bf16"):
        code, _ = train_tiny(
            tmp_path / precision,
            precision=precision,
            width_multiplier=0.0625,
            max_train_steps=80,
            iterations_per_loop=10,
            display_every=10,
        )
        assert code == 0
        losses[precision] = [r["loss"] for r in read_metrics(tmp_path / precision)]
    bf16, fp32 = np.array(losses["bf16"]), np.array(losses["fp32"])
    assert len(bf16) == 8 and np.isfinite(bf16).all()
    assert bf16[-1] < bf16[0] - 0.15, losses
    np.testing.assert_allclose(bf16, fp32, atol=0.1)


def test_fp16_run_uses_dynamic_loss_scaling_and_stays_finite(train_tiny, tmp_path):
    # fp16 convolutions are emulated on CPUs and slow: a few small steps.
    code, _ = train_tiny(tmp_path, precision="fp16", batch_size=8, max_train_steps=3)
    assert code == 0
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert np.isfinite([r["total_loss"] for r in records]).all()
    variables = final_variables(tmp_path)
    assert variables["current_loss_scale"] > 1  # the dynamic loss scale is saved and resumed
    assert variables["block1_conv1/kernel"].dtype == np.float32


# ---------------------------------------------------------------------------------------------
# A resume that changes precision


@pytest.mark.parametrize(
    ("first", "then"),
    # TF 1.15 runs a resume into fp16 and one out of it into bf16: the other two cross the same
    # casts the other way.
    [("fp32", "fp16"), pytest.param("fp16", "fp32", marks=stack_neutral)]
    + [pytest.param("bf16", "fp16", marks=stack_neutral), ("fp16", "bf16")],
)
def test_a_resume_in_another_precision_goes_on_and_says_so(train_tiny, tmp_path, first, then):
    """A checkpoint without the fp16 loss scale resumes with a fresh one; an fp16 checkpoint's
    scale is left out by a run that has none; either way the weights and the step go on."""
    assert train_tiny(tmp_path, precision=first, batch_size=8, max_train_steps=2)[0] == 0
    before = final_variables(tmp_path)
    assert train_tiny(tmp_path, precision=then, batch_size=8, max_train_steps=3)[0] == 0
    after = final_variables(tmp_path)
    assert int(after["global_step"]) == 3
    assert ("current_loss_scale" in after) == (then == "fp16")
    assert not np.array_equal(after["fc1/kernel"], before["fc1/kernel"]), "trained on"
    with open(tmp_path / "train.log") as f:
        log = f.read()
    assert f"note: the run was trained in {first}, it goes on in {then}" in log
    assert ("holds no fp16 loss scale: a fresh one" in log) == (then == "fp16")
    assert "resumed from" in log and "unreadable" not in log


# ---------------------------------------------------------------------------------------------
# The reference implementation's checkpoints


def rename_to_ours(reference_prefix: str, arch_name: str, out_prefix: str) -> None:
    """The reference checkpoint's values under our names, mapped by creation order here (not by
    the project's own mapping): its i-th convolution is our i-th, dense/dense_1/dense_2 are
    fc1/fc2/predictions; slots and global_step follow."""
    row = arch.get(arch_name)
    convs = row.conv_layers()
    theirs = (
        ["conv2d"] + [f"conv2d_{i}" for i in range(1, len(convs))] + ["dense", "dense_1", "dense_2"]
    )
    mapping = dict(zip(theirs, convs + ["fc1", "fc2", "predictions"]))
    reader = tf.train.load_checkpoint(reference_prefix)
    with tf.Graph().as_default() as graph:
        variables = []
        for name in reader.get_variable_to_shape_map():
            layer, _, rest = name.partition("/")
            ours = f"{mapping[layer]}/{rest}" if layer in mapping else name
            variables.append(v1.Variable(reader.get_tensor(name), name=ours))
        saver, init = v1.train.Saver(variables), v1.global_variables_initializer()
    with v1.Session(graph=graph) as sess, graph.as_default():
        sess.run(init)
        saver.save(sess, out_prefix, write_meta_graph=False)


# TF 1.15 runs the seed's network; VGG16 differs in the table only.
@pytest.mark.parametrize("arch_name", [pytest.param("vgg16", marks=stack_neutral), "vgg19"])
def test_a_reference_run_resumes_exactly_as_its_renamed_copy(train_tiny, tmp_path, arch_name):
    """Weights, momentum slots, global_step and the schedule's position come from a
    reference-layout checkpoint: one more step from it equals one more step from the same
    values in our layout."""
    theirs, ours = tmp_path / "reference_run", tmp_path / "renamed"
    for folder in (theirs, ours):
        folder.mkdir()
    prefix = write_reference_checkpoint(str(theirs), arch_name, steps=3)
    rename_to_ours(prefix, arch_name, str(ours / "model.ckpt-3"))
    settings = dict(arch=arch_name, dense_init="normal", max_train_steps=5)
    for folder in (theirs, ours):
        assert train_tiny(folder, **settings)[0] == 0
    with open(theirs / "train.log") as f:
        assert f"resumed from {prefix} at step 3" in f.read()
    got, expected = final_variables(theirs), final_variables(ours)
    assert int(got["global_step"]) == 5 and "block1_conv1/kernel/Momentum" in got
    assert_same_variables(got, expected)
    lrs = [(r["step"], r["lr"]) for r in read_metrics(theirs)]
    assert lrs == [(s, r) for s, r in ((r["step"], r["lr"]) for r in read_metrics(ours))]
    assert [s for s, _ in lrs] == [4, 5], "the run went on from the reference's step"


# ---------------------------------------------------------------------------------------------
# The best checkpoint


@stack_neutral  # which checkpoints rotation deletes: Python
def test_the_best_checkpoint_is_kept_out_of_rotation(train_tiny, tmp_path):
    assert train_tiny(tmp_path, max_train_steps=6, save_checkpoints_steps=2)[0] == 0
    (tmp_path / "best_checkpoint.json").write_text(
        json.dumps({"checkpoint": "model.ckpt-2", "step": 2, "top1": 1.0})
    )
    code, _ = train_tiny(
        tmp_path, max_train_steps=12, save_checkpoints_steps=2, keep_checkpoint_max=2
    )
    assert code == 0
    assert checkpoint_steps(tmp_path) == [2, 10, 12]


def test_train_and_evaluate_records_the_best_evaluation(train_tiny, tmp_path):
    code, _ = train_tiny(tmp_path, mode="train_and_evaluate", max_train_steps=88, display_every=44)
    assert code == 0
    evaluated = [r for r in read_metrics(tmp_path) if "eval_top1" in r]
    best = max(evaluated, key=lambda r: r["eval_top1"])
    record = rundir.read_best(str(tmp_path))
    assert (record["step"], record["top1"]) == (best["step"], pytest.approx(best["eval_top1"]))
    assert record["step"] in checkpoint_steps(tmp_path)


# ---------------------------------------------------------------------------------------------
# Gradient accumulation


def test_accumulated_steps_take_the_big_batchs_images_and_resume_exactly(train_tiny, tmp_path):
    """--accumulation_steps 4 --batch_size 8 reads the stream of --batch_size 32 (the same 32
    records per optimizer step, the same crops), counts optimizer steps and images, and a run
    interrupted between steps resumes where it stopped."""
    settings = dict(max_train_steps=4, display_every=2, iterations_per_loop=2, warmup_epochs=0.0)
    straight, interrupted, big = tmp_path / "straight", tmp_path / "interrupted", tmp_path / "big"
    assert train_tiny(big, batch_size=32, **settings)[0] == 0
    assert train_tiny(straight, batch_size=8, accumulation_steps=4, **settings)[0] == 0
    assert (
        train_tiny(
            interrupted, batch_size=8, accumulation_steps=4, **{**settings, "max_train_steps": 2}
        )[0]
        == 0
    )
    assert train_tiny(interrupted, batch_size=8, accumulation_steps=4, **settings)[0] == 0
    assert_same_variables(final_variables(interrupted), final_variables(straight))
    got, want = final_variables(straight), final_variables(big)
    assert int(got["global_step"]) == int(want["global_step"]) == 4
    for name in want:  # to float rounding: summed in another order
        np.testing.assert_allclose(got[name], want[name], rtol=2e-3, atol=2e-5, err_msg=name)
    records = read_metrics(straight)
    assert [r["step"] for r in records] == [2, 4]
    assert records[0]["epoch"] == pytest.approx(2 / (1437 // 32))  # epochs of 32 images
    with open(straight / "config.json") as f:
        assert json.load(f)["run"]["global_batch"] == 32


# ---------------------------------------------------------------------------------------------
# Fine-tuning a part of the network, resuming from a chosen checkpoint


def test_trainable_from_keeps_the_base_as_loaded(train_tiny, tmp_path):
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    assert train_tiny(base, max_train_steps=2)[0] == 0
    code, _ = train_tiny(
        tuned, restore_path=str(base), trainable_from="block5", max_train_steps=3, class_num=12
    )
    assert code == 0
    before, after = final_variables(base), final_variables(tuned)
    for name in after:
        if name.startswith(("block1", "block2", "block3", "block4")) and "Momentum" not in name:
            np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    assert not np.array_equal(after["block5_conv1/kernel"], before["block5_conv1/kernel"])
    assert "block4_conv3/kernel/Momentum" not in after, "no optimizer state for a frozen layer"
    assert "block5_conv1/kernel/Momentum" in after


def test_trainable_from_names_a_layer_or_a_block_of_the_network():
    with pytest.raises(
        UsageError, match=r"^--trainable_from: block6 is no layer or block of vgg16"
    ):
        demo_config(trainable_from="block6")
    assert demo_config(trainable_from="block3_conv2").network.trainable_from == "block3_conv2"


@stack_neutral  # a line at start: Python
def test_a_change_of_the_rate_beyond_the_runs_end_is_one_warning_at_start(train_tiny, tmp_path):
    """The demo's cosine ends at epoch 20 (step 880 at 44 steps per epoch): a 2-step run says
    so once, and trains on the schedule as it is."""
    assert train_tiny(tmp_path, max_train_steps=2)[0] == 0
    with open(tmp_path / "train.log") as f:
        said = [line for line in f.read().splitlines() if "beyond the run's end" in line]
    assert said == [
        "warning: --T_max 20: the cosine's end (step 880) is beyond the run's end "
        "(--max_train_steps 2): the rate never gets there; the schedule is not rescaled"
    ]


@stack_neutral  # the run's record of its evaluations: Python
def test_a_branch_from_another_folders_evaluated_checkpoint_goes_on(train_tiny, tmp_path):
    """--resume into a new --log_dir from a checkpoint at an evaluation step: the evaluation
    belongs to the folder it was made in; the branch trains on and evaluates its own."""
    run, branch = tmp_path / "run", tmp_path / "branch"
    every = dict(mode="train_and_evaluate", epochs_between_evals=2 / 44, eval_batch_size=360)
    assert train_tiny(run, max_train_steps=2, **every)[0] == 0
    assert train_tiny(branch, resume=str(run / "model.ckpt-2"), max_train_steps=4, **every)[0] == 0
    evaluated = [r["step"] for r in read_metrics(branch) if "eval_top1" in r]
    assert evaluated == [4]


@stack_neutral  # how a run starts: Python; TF 1.15's exact resumes are the tests above
def test_resume_names_the_checkpoint_to_go_on_from(train_tiny, tmp_path):
    run, branch = tmp_path / "run", tmp_path / "branch"
    assert train_tiny(run, max_train_steps=4, save_checkpoints_steps=2)[0] == 0
    assert checkpoint_steps(run) == [2, 4]
    with pytest.raises(UsageError, match=r"--resume .*model.ckpt-2: --log_dir .* holds newer"):
        train_tiny(run, resume=str(run / "model.ckpt-2"), max_train_steps=6)
    assert checkpoint_steps(run) == [2, 4], "nothing was touched"
    code, _ = train_tiny(branch, resume=str(run / "model.ckpt-2"), max_train_steps=4)
    assert code == 0
    with open(branch / "train.log") as f:
        assert f"resumed from {run}/model.ckpt-2 at step 2" in f.read()
    # From step 2 of the same run, the same two steps: the branch ends where the run did.
    assert_same_variables(final_variables(branch), final_variables(run))


# ---------------------------------------------------------------------------------------------
# The dataset checked as it is read


def test_a_shard_shorter_than_listed_stops_a_sunk_run_in_one_line(tmp_path, shard_writer):
    """40 records where dataset_info.json lists 3,200: the run stops as it reads the shard (in
    the sunk loop), with one line naming it, instead of training at "epoch 0.0"."""
    from conftest import run_script

    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(40)]
    labels = [1 + k % 10 for k in range(40)]
    shard = shard_writer(str(data), images, labels, num_classes=10)[0]
    meta = json.loads((data / "dataset_info.json").read_text())
    meta["files"]["train-00000-of-00001"] = meta["splits"]["train"] = 3200
    (data / "dataset_info.json").write_text(json.dumps(meta))
    flags = ["--preset", "demo", "--width_multiplier", "0.0625", "--batch_size", "8"]
    flags += ["--iterations_per_loop", "4", "--max_train_steps", "40", "--mode", "train"]
    proc = run_script("run_train.py", *flags, "--data_dir", data, "--log_dir", tmp_path / "run")
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {shard}: 40 records, its dataset lists 3200: not the shard"), (
        last
    )


@pytest.mark.skipif(gpu_count() > 0, reason="with a GPU, TensorFlow's choice stays")
def test_the_log_says_when_a_large_step_runs_one_op_at_a_time():
    from vgg_keras import clock, distribute, op_parallelism

    config = demo_config("imagenet", synthetic=True, intra_op_threads=2)
    plan = clock.plan(config, None, 1, "fp32")
    one_device = distribute.single_device()
    large = 2 * 2 * op_parallelism.ONE_AT_A_TIME_GFLOP * 1e9  # twice the threshold on 2 cores

    def noted(step_flops, **runtime):
        runtime_config = demo_config("imagenet", synthetic=True, intra_op_threads=2, **runtime)
        notes = training._start_notes(runtime_config, one_device, plan, step_flops)
        return [note for note in notes if "one at a time" in note]

    assert noted(large) == [
        "note: a training step is 2,000 GFLOP, enough to fill the cores op by op: its ops run "
        "one at a time (--inter_op_threads sets how many at once)"
    ]
    assert noted(large / 100) == []  # TensorFlow's choice, nothing to say
    assert noted(large, inter_op_threads=1) == []  # the user's own choice
