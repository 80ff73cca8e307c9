"""Which devices and workers a run uses, and the few calls the graphs make through it.

``--distribution``:

- ``none``: one device.
- ``mirrored``: ``tf.compat.v1.distribute.MirroredStrategy`` over the local GPUs (or
  ``--devices``; naming several CPUs splits the host CPU into that many logical devices, which
  is how the tests run it).
- ``multi_worker``: ``MultiWorkerMirroredStrategy`` over the cluster of ``TF_CONFIG``, or of the
  srun job step this process is a task of (SLURM), ``TF_CONFIG`` first (``tools/discovery.py``).
- ``npu``: Ascend NPUs through ``npu_bridge`` (see ``npu.py``), one process per device.
- ``auto``: ``multi_worker`` when ``TF_CONFIG`` names a cluster or srun started more than one
  task, ``mirrored`` with
  ``--devices``, ``npu`` where ``npu_bridge`` is importable, ``mirrored`` when more than one GPU
  is visible, else ``none``.

The training and evaluation graphs are written once, against ``Distribution``; each kind
other than ``none`` is a subclass holding what it does differently.  For ``none`` and ``npu``
the strategy is TensorFlow's default strategy, whose replica functions run once, in place, so
the single-device graph is the same code.

Multi-worker runs use the arrangement graph mode needs: the strategy is created inside a graph
(so it leaves the eager runtime alone), each worker starts an in-process gRPC server at its
cluster address, and every session runs on that server with the strategy's ConfigProto
(collective group leader, device filters).  Gradients are all-reduced by the strategy:
MirroredStrategy uses NCCL between the GPUs of a host, MultiWorkerMirroredStrategy collective
all-reduce (NCCL on GPU workers, a ring over gRPC otherwise).
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Callable
from typing import ClassVar

from vgg_keras import compat, cores, npu, op_parallelism
from vgg_keras.compat import tf, v1
from vgg_keras.config import Config, Runtime
from vgg_keras.data import pipeline
from vgg_keras.errors import UsageError
from vgg_keras.tools import discovery

ReduceOp = tf.distribute.ReduceOp


@dataclasses.dataclass
class Distribution:
    """The strategy of a run and this process's place in it; as is, one device (``none``).

    One subclass per other kind holds what that kind does differently.
    """

    kind: ClassVar[str] = "none"
    strategy: tf.distribute.Strategy
    num_replicas: int = 1  # replicas in sync, over all workers
    num_workers: int = 1
    worker_index: int = 0
    is_chief: bool = True
    target: str = ""  # session target: "" runs in-process, else this worker's gRPC server
    configure_session: Callable[[v1.ConfigProto], v1.ConfigProto] = lambda c: c
    server: tf.distribute.Server | None = None  # kept alive as long as the run
    # False: the training graph sinks its loop into a tf.while_loop; True: ``device_loop``
    # repeats a step on the device (Npu).
    sinks_its_own_loop: ClassVar[bool] = False

    @property
    def local_replicas(self) -> int:
        return self.num_replicas // self.num_workers

    @property
    def in_sync(self) -> int:
        """Replicas whose gradients the strategy sums (its loss is divided by this)."""
        return self.strategy.num_replicas_in_sync

    def describe(self) -> str:
        """One line for the log: what runs where."""
        if self.kind == "none":
            return "distribution: none (one device)"
        line = (
            f"distribution: {self.kind}, {self.num_replicas} replicas = {self.num_workers} "
            f"worker(s) x {self.local_replicas}"
        )
        if self.num_workers > 1:
            line += f"; this is worker {self.worker_index}" + (" (chief)" if self.is_chief else "")
        return line

    def scope(self):
        """Where variables, the model and the optimizer must be created."""
        return self.strategy.scope()

    def session(self, graph: tf.Graph, runtime: Runtime, step_flops: float = 0.0) -> v1.Session:
        """A session for ``graph``; every graph of the project (training, evaluation, export,
        prediction) gets one here.  ``step_flops``: one replica's work in a training step."""
        config = self.session_config(runtime, step_flops)
        return v1.Session(target=self.target, graph=graph, config=config)

    def session_config(self, runtime: Runtime, step_flops: float = 0.0) -> v1.ConfigProto:
        """--intra_op_threads, --inter_op_threads (for 0 on one CPU device, one op at a time
        when each step's ops fill the cores: ``op_parallelism``) and --xla."""
        inter_op = runtime.inter_op_threads
        if self.kind == "none" and not compat.gpu_count():
            cores_used = runtime.intra_op_threads or cores.usable()
            inter_op = op_parallelism.inter_op_threads(inter_op, step_flops, cores_used)
        proto = compat.session_config(runtime.intra_op_threads, inter_op, runtime.xla)
        return self.configure_session(proto)

    def input_iterator(self, dataset_fn: Callable[[int, int], tf.data.Dataset]):
        """(initializer op, get_next function) over per-replica batches.

        ``dataset_fn(num_workers, worker_index)`` returns this worker's dataset batched per
        replica; the strategy hands consecutive batches to the worker's local replicas.

        Every iterator of a run is made here, and none autotunes: closing a session or
        re-initialising an iterator waits for the autotuner's thread, asleep up to a minute.
        """

        def untuned(num_workers: int, worker_index: int) -> tf.data.Dataset:
            return compat.without_autotune(dataset_fn(num_workers, worker_index))

        if self.in_sync == 1:  # no tf.distribute replicas: an ordinary iterator
            iterator = v1.data.make_initializable_iterator(
                untuned(self.num_workers, self.worker_index)
            )
            return iterator.initializer, iterator.get_next
        with warnings.catch_warnings():
            # The strategy reads the dataset's options in graph mode, which TensorFlow warns
            # "might not reflect the actual value"; ours are the defaults either way.
            warnings.filterwarnings("ignore", "To make it possible to preserve tf.data options")
            with compat.device_datasets_without_autotune():
                iterator = self.strategy.make_input_fn_iterator(
                    lambda ctx: untuned(ctx.num_input_pipelines, ctx.input_pipeline_id)
                )
        return tf.group(iterator.initialize()), iterator.get_next

    def run(self, fn, *args):
        """``fn(*args)`` on every local replica (per-replica args are split among them)."""
        return self.strategy.extended.call_for_each_replica(fn, args=args)

    def reduce(self, op: ReduceOp, value):
        """A per-replica value reduced over all replicas of all workers."""
        return self.strategy.reduce(op, value, axis=None)

    def sum_over_replicas(self, values: list) -> list:
        """Each of ``run``'s per-replica ``values`` summed over all replicas of all workers.
        (On Ascend, one replica per process: NPUDistributedOptimizer's compute_gradients has
        already averaged the gradients over the ranks.)"""
        if self.in_sync == 1:
            return values
        return [self.reduce(ReduceOp.SUM, v) for v in values]

    def group(self, value) -> tf.Operation:
        return self.strategy.group(value)

    def for_evaluation(self) -> Distribution:
        """The distribution evaluation runs under: the strategies split the validation set
        among their replicas and sum the counts."""
        return self

    def eval_steps(self, split: pipeline.Split, batch_size: int) -> int:
        """Session calls that cover the largest worker's share of ``split``."""
        shares = [split.for_worker(self.num_workers, i)[2] for i in range(self.num_workers)]
        return max(1, math.ceil(max(shares) / (batch_size * self.local_replicas)))

    def precision(self, precision: str) -> str:
        """The Keras policy of every graph of a run (training, evaluation) for --precision."""
        cap = compat.onednn_cap_without_bf16() if precision == "bf16" else None
        if cap:
            raise UsageError(
                f"--precision bf16: ONEDNN_MAX_CPU_ISA={cap} leaves oneDNN no bf16 kernels, "
                "and TensorFlow would give it the bf16 ops all the same; unset it, set "
                "TF_ENABLE_ONEDNN_OPTS=0, or use --precision fp32"
            )
        return precision

    def wrap_optimizer(self, optimizer, precision: str):
        """Dynamic loss scaling for fp16."""
        if precision == "fp16":
            return compat.loss_scale_optimizer(optimizer)
        return optimizer

    def broadcast(self, variables) -> tf.Operation | None:
        """An op giving every worker the chief's values, where the strategy does not do it
        itself (MultiWorkerMirroredStrategy broadcasts initial values on its own)."""
        return None

    def check_plan(self, plan) -> None:
        """Session calls are cut short at log, save and eval steps: any interval works."""


class Mirrored(Distribution):
    """MirroredStrategy over the GPUs (or logical CPUs) of this host."""

    kind = "mirrored"

    def describe(self) -> str:
        return f"{super().describe()} ({', '.join(self.strategy.extended.worker_devices)})"


class MultiWorker(Distribution):
    """MultiWorkerMirroredStrategy over the hosts of TF_CONFIG."""

    kind = "multi_worker"


class Npu(Distribution):
    """Ascend NPUs through npu_bridge (``npu.py``), one process per device, HCCL between them;
    the strategy is TensorFlow's default one, which runs replica functions in place."""

    kind = "npu"
    sinks_its_own_loop = True

    def for_evaluation(self) -> Distribution:
        """Every rank evaluates the whole validation set, in a session of its own: no HCCL
        collective runs outside the training graph."""
        return dataclasses.replace(self, num_replicas=1, num_workers=1, worker_index=0)

    def precision(self, precision: str) -> str:
        """The graphs stay float32; the NPU mixes precision itself (its precision_mode)."""
        return "fp32"

    def wrap_optimizer(self, optimizer, precision: str):
        """HCCL all-reduce and the NPU's own loss scaling."""
        return npu.wrap_optimizer(optimizer, precision, self.num_workers)

    def reduce(self, op: ReduceOp, value):
        """Over the ranks by HCCL: TensorFlow's default strategy sees this process only."""
        if self.num_workers == 1:
            return value
        summed = npu.all_reduce_sum(value)
        return summed / self.num_workers if op == ReduceOp.MEAN else summed

    def broadcast(self, variables) -> tf.Operation | None:
        return npu.broadcast_variables(variables) if self.num_workers > 1 else None

    def device_loop(self, train_op: tf.Operation):
        """(op running N steps per call, load(session, N)): the device repeats the step."""
        return npu.device_loop(train_op)

    def check_plan(self, plan) -> None:
        """The device loop always runs --iterations_per_loop steps."""
        plan.check_fixed_calls()


def pad_batches(dataset: tf.data.Dataset, batch_size: int, batches: int) -> tf.data.Dataset:
    """Exactly ``batches`` full batches of (images, labels, real): ``dataset``'s batches, then
    all-zero images marked not real.

    Every replica of every worker must run the same number of steps (a collective waits for all
    of them), while the workers' shares of the validation set differ in size; the padding fills
    the difference and counts for nothing.
    """
    images, labels = dataset.element_spec
    filler = (tf.zeros(images.shape[1:], images.dtype), tf.zeros([], labels.dtype), False)
    real = dataset.unbatch().map(pipeline.as_written(lambda image, label: (image, label, True)))
    padding = tf.data.Dataset.from_tensors(filler).repeat()
    padded = real.concatenate(padding).take(batches * batch_size)
    batched = padded.batch(batch_size, drop_remainder=True).prefetch(pipeline.AUTOTUNE)
    return compat.without_autotune(batched)  # it is made anew for every checkpoint


def resolve_kind(config: Config, cluster: dict | None = None) -> str:
    """The distribution ``auto`` stands for, or the one asked for."""
    runtime = config.runtime
    if runtime.distribution != "auto":
        return runtime.distribution
    if cluster is not None:
        return "multi_worker"
    if runtime.devices:
        return "mirrored"
    if compat.npu_available():
        return "npu"
    return "mirrored" if compat.gpu_count() > 1 else "none"


def create(config: Config) -> Distribution:
    """The Distribution of ``config``; call it before anything else touches TensorFlow devices.

    Logical CPU devices and multi-worker collectives can only be set up before the runtime
    initialises its devices.
    """
    tf_config, source = discovery.read_cluster()
    cluster = tf_config.get("cluster") if tf_config else None
    kind = resolve_kind(config, cluster)
    runtime = config.runtime
    if kind != "npu" and runtime.rank_size > 1:
        raise UsageError(
            f"--rank_size applies to --distribution npu; {kind} takes its size from "
            "--devices or TF_CONFIG"
        )
    if kind != "mirrored" and runtime.devices:
        raise UsageError(f"--devices applies to --distribution mirrored, not {kind}")
    if kind == "multi_worker":
        return _multi_worker(tf_config, source)
    if cluster is not None and _num_workers(cluster) > 1:
        remedy = "unset TF_CONFIG" if source == "TF_CONFIG" else "run one task"
        raise UsageError(
            f"{source} describes {_num_workers(cluster)} workers, but --distribution is {kind} "
            f"(use multi_worker or auto, or {remedy})"
        )
    if kind == "mirrored":
        return _mirrored(runtime.devices)
    if kind == "npu":
        return _npu(config)
    return single_device()


def single_device() -> Distribution:
    """One device, no strategy: TensorFlow's default strategy runs replica functions in place."""
    return Distribution(tf.distribute.get_strategy())


def _num_workers(cluster: dict) -> int:
    return len(cluster.get("chief", [])) + len(cluster.get("worker", []))


def _mirrored(devices: list[str] | None) -> Distribution:
    """MirroredStrategy over ``devices``, else over every GPU TensorFlow sees.

    Refuses a device TensorFlow does not see (a missing GPU made MirroredStrategy wait forever,
    or run on the CPU while naming the GPU), and a device named twice.  Naming k CPUs splits
    the host CPU into cpu:0 .. cpu:k-1 (replicas without GPUs).
    """
    names = [_device_name(d) for d in devices] if devices else None
    if names:
        gpus, cpus = compat.gpu_count(), sum("CPU" in n for n in names)
        for k, (text, name) in enumerate(zip(devices, names)):
            kind, index = name.split(":")[-2:]
            if int(index) >= (gpus if kind == "GPU" else cpus):
                have = ", ".join(f"gpu:{g}" for g in range(gpus)) or "no GPU"
                raise UsageError(
                    f"--devices: {text} is not a device TensorFlow sees here ({have}; "
                    f"naming k CPUs gives cpu:0 .. cpu:k-1)"
                )
            if name in names[:k]:
                raise UsageError(f"--devices: {text} is named twice")
        if cpus > 1:
            try:
                compat.split_cpu(cpus)
            except RuntimeError as err:
                raise UsageError(
                    f"--devices: cannot split the CPU into {cpus} devices once TensorFlow has "
                    "set up its devices"
                ) from err
    with tf.Graph().as_default():  # a strategy made in eager mode would configure the runtime
        strategy = v1.distribute.MirroredStrategy(names)
    return Mirrored(
        strategy,
        num_replicas=strategy.num_replicas_in_sync,
        configure_session=strategy.update_config_proto,
    )


def _device_name(text: str) -> str:
    """'/device:GPU:1' from 'gpu:1', 'GPU:1', '/gpu:1' or '/device:GPU:1'."""
    try:
        spec = tf.DeviceSpec.from_string(text if text.startswith("/") else "/" + text)
    except ValueError:
        spec = None
    if spec is None or spec.device_type not in ("CPU", "GPU") or spec.device_index is None:
        raise UsageError(f"--devices: {text!r} is not a device name like gpu:0 or cpu:1")
    return f"/device:{spec.device_type}:{spec.device_index}"


def _multi_worker(tf_config: dict | None, source: str = "TF_CONFIG") -> Distribution:
    """MultiWorkerMirroredStrategy over ``tf_config``'s cluster (from TF_CONFIG or SLURM), this
    process its ``task``; the strategy reads the cluster from the same resolver as the server."""
    if not tf_config or "cluster" not in tf_config or "task" not in tf_config:
        raise UsageError(
            "--distribution multi_worker needs TF_CONFIG with 'cluster' and 'task' "
            "(see python -m vgg_keras.launch), or srun with more than one task"
        )
    task, cluster = tf_config["task"], tf_config["cluster"]
    if task.get("type") not in ("chief", "worker"):
        raise UsageError(f"TF_CONFIG: task type must be chief or worker, got {task.get('type')!r}")
    addresses = cluster.get(task["type"], [])
    if not isinstance(task.get("index"), int) or not 0 <= task["index"] < len(addresses):
        raise UsageError(
            f"TF_CONFIG: task index {task.get('index')!r} is not one of the "
            f"{len(addresses)} {task['type']} addresses"
        )
    if not compat.MULTI_WORKER:
        raise UsageError(discovery.MULTI_WORKER_NEEDS_TF2)
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster),
        task_type=task["type"],
        task_id=task["index"],
        rpc_layer="grpc",
        # This worker's replicas: every GPU it sees (what the strategy counts under TF_CONFIG).
        num_accelerators={"GPU": compat.gpu_count()},
    )
    with tf.Graph().as_default():  # graph mode: no eager collectives, we start the server
        strategy = v1.distribute.experimental.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    try:
        server = tf.distribute.Server(
            resolver.cluster_spec(),
            job_name=resolver.task_type,
            task_index=resolver.task_id,
            config=strategy.update_config_proto(v1.ConfigProto()),
            start=True,
        )
    except (tf.errors.OpError, ValueError) as err:
        raise UsageError(f"{source}: cannot serve at {addresses[task['index']]} ({err})") from err
    # Workers are numbered as the strategy numbers its input pipelines: the chief first.
    index = resolver.task_id + (len(cluster.get("chief", [])) if task["type"] == "worker" else 0)
    return MultiWorker(
        strategy,
        num_replicas=strategy.num_replicas_in_sync,
        num_workers=_num_workers(cluster),
        worker_index=index,
        is_chief=strategy.extended.should_checkpoint,
        target=server.target,
        configure_session=strategy.update_config_proto,
        server=server,
    )


def _npu(config: Config) -> Distribution:
    if not compat.npu_available():
        raise UsageError(
            "--distribution npu: npu_bridge is not importable (install the Ascend CANN "
            "TensorFlow adapter, or choose another --distribution)"
        )
    try:
        rank_id = int(os.environ.get("RANK_ID", "0"))
    except ValueError as err:
        raise UsageError(f"RANK_ID must be an integer, got {os.environ['RANK_ID']!r}") from err
    ranks = config.runtime.rank_size
    if ranks > 1:
        missing = [v for v in ("RANK_ID", "RANK_SIZE", "RANK_TABLE_FILE") if not os.environ.get(v)]
        if missing:
            raise UsageError(f"--rank_size {ranks}: set {' and '.join(missing)}")
        # NPUDistributedOptimizer averages over RANK_SIZE ranks, whatever --rank_size says.
        if os.environ["RANK_SIZE"].strip() != str(ranks):
            raise UsageError(
                f"RANK_SIZE {os.environ['RANK_SIZE']!r} differs from --rank_size {ranks}"
            )
        if not 0 <= rank_id < ranks:
            raise UsageError(f"RANK_ID {rank_id} is outside --rank_size {ranks}")
    return Npu(
        tf.distribute.get_strategy(),
        num_replicas=ranks,
        num_workers=ranks,
        worker_index=rank_id if ranks > 1 else 0,
        is_chief=rank_id == 0 or ranks == 1,
        configure_session=lambda base: npu.session_config(
            base,
            precision=config.network.precision,
            iterations_per_loop=config.loop.iterations_per_loop,
        ),
    )
