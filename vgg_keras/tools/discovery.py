"""Cluster discovery: the cluster this process is a task of, as a TF_CONFIG dict, from
``TF_CONFIG`` or from the srun job step's environment (SLURM), for ``--distribution
multi_worker`` and ``auto`` (distribute.py)."""

from __future__ import annotations

import os
import re

from vgg_keras import compat, documents
from vgg_keras.compat import tf
from vgg_keras.errors import UsageError

MULTI_WORKER_NEEDS_TF2 = (
    "--distribution multi_worker: needs TensorFlow 2 (TF 1.15's collectives fail in the sunk "
    "training loop); use mirrored on one host, or npu on Ascend"
)


def read_cluster() -> tuple[dict | None, str]:
    """The cluster this process is a task of, as a TF_CONFIG dict, and where it was read:
    TF_CONFIG when set (it wins), else the srun job step's environment (SLURM)."""
    text = os.environ.get("TF_CONFIG", "").strip()
    if text:
        what = "cluster description (JSON with 'cluster' and 'task')"
        return documents.parse(text, "TF_CONFIG", what), "TF_CONFIG"
    return _read_slurm(), SLURM_SOURCE


SLURM_SOURCE = "SLURM (SLURM_STEP_NUM_TASKS)"
SLURM_DEFAULT_PORT = 8888  # TensorFlow's, outside a SLURM job
SLURM_JOB_PORTS = 15000  # + SLURM_JOB_ID % 10000: two jobs on one node rarely meet


def _read_slurm() -> dict | None:
    """The srun job step this process is a task of, as a TF_CONFIG dict; None outside srun or
    for a single task.

    srun sets SLURM_STEP_NUM_TASKS for its tasks; a batch script that runs python itself has
    none, and trains as one process.  TensorFlow's SlurmClusterResolver lays the tasks out: the
    step's nodes (SLURM_STEP_NODELIST) in sorted order, SLURM_STEP_TASKS_PER_NODE on each in
    block order, task SLURM_PROCID, local task i at port base + i.  Its GPU bookkeeping is not
    used: it would set CUDA_VISIBLE_DEVICES after TensorFlow has listed the GPUs; each task
    takes the GPUs it sees (srun --gpus-per-task, or every GPU of its node).
    """
    if "SLURM_STEP_NUM_TASKS" not in os.environ:
        return None
    tasks = _slurm_int("SLURM_STEP_NUM_TASKS", 1, None)
    if tasks == 1:
        return None
    if not compat.MULTI_WORKER:
        raise UsageError(f"srun started {tasks} tasks: {MULTI_WORKER_NEEDS_TF2}")
    rank = _slurm_int("SLURM_PROCID", 0, tasks - 1)
    base, last = _slurm_ports()
    try:
        resolver = tf.distribute.cluster_resolver.SlurmClusterResolver(
            port_base=base, gpus_per_node=tasks, gpus_per_task=1, auto_set_gpu=False
        )
        cluster = resolver.cluster_spec().as_dict()
    except (RuntimeError, ValueError) as err:
        raise UsageError(_slurm_error(err, tasks)) from err
    task = {"type": resolver.task_type, "index": resolver.task_id}
    address = cluster[task["type"]][task["index"]]
    _check_slurm_placement(rank, address, base, last)
    return {"cluster": cluster, "task": task}


def _slurm_int(name: str, low: int, high: int | None) -> int:
    text = os.environ.get(name)
    if text is None:
        raise UsageError(f"{name} is not set (srun sets it for each task)")
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"between {low} and {high}"
        raise UsageError(f"{name} must be an integer {bound}, got {text!r}")
    return value


def _slurm_ports() -> tuple[int, int | None]:
    """The first port of this step's tasks on a node, and the last one it may use: srun
    --resv-ports' range (SLURM_STEP_RESV_PORTS, e.g. 12000-12003), else a base from the job id
    (no upper bound), else TensorFlow's default."""
    reserved = os.environ.get("SLURM_STEP_RESV_PORTS")
    if reserved:
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", reserved.strip())
        if not match or not 0 < int(match[1]) <= int(match[2] or match[1]) < 65536:
            raise UsageError(
                f"SLURM_STEP_RESV_PORTS must be a port range like 12000-12003, got {reserved!r}"
            )
        return int(match[1]), int(match[2] or match[1])
    job = os.environ.get("SLURM_JOB_ID", "")
    return (SLURM_JOB_PORTS + int(job) % 10000 if job.isdigit() else SLURM_DEFAULT_PORT), None


def _slurm_error(err: Exception, tasks: int) -> str:
    """One line naming the SLURM variable that TensorFlow's resolver could not use."""
    text = str(err)
    missing = re.match(r"(SLURM_\w+) not found in environment", text)
    if missing:
        return f"{missing[1]} is not set (srun sets it; SLURM_STEP_NUM_TASKS is {tasks})"
    nodes = os.environ.get("SLURM_STEP_NODELIST")
    if "hostlist" in text:
        return f"SLURM_STEP_NODELIST is not a SLURM host list, got {nodes!r}"
    per_node = os.environ.get("SLURM_STEP_TASKS_PER_NODE")
    if "tasks-per-node" in text:
        return f"SLURM_STEP_TASKS_PER_NODE is not a SLURM task count list, got {per_node!r}"
    return (
        f"SLURM_STEP_TASKS_PER_NODE {per_node!r} on the nodes {nodes!r} (SLURM_STEP_NODELIST) "
        f"does not make the SLURM_STEP_NUM_TASKS={tasks} tasks"
    )


def _check_slurm_placement(rank: int, address: str, base: int, last: int | None) -> None:
    """Refuse a layout in which this task is not where the resolver puts it: every worker would
    wait for a partner at an address where another one serves."""
    host, port = address.rsplit(":", 1)
    local_task = int(port) - base
    node = os.environ.get("SLURMD_NODENAME")
    local = os.environ.get("SLURM_LOCALID")
    if (node is not None and node != host) or (local is not None and local != str(local_task)):
        raise UsageError(
            f"SLURM_PROCID {rank} runs on {node} as local task {local} (SLURMD_NODENAME, "
            f"SLURM_LOCALID), but TensorFlow's SlurmClusterResolver places it at {address}: it "
            "expects srun's block distribution and node names that sort as SLURM lists them"
        )
    if last is not None and int(port) > last:
        raise UsageError(
            f"SLURM_STEP_RESV_PORTS ends at {last}, but local task {local_task} of "
            f"{host} needs port {port} (reserve one port per task on a node)"
        )
