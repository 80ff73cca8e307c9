"""The whole loop with its data and its run in a store, through the real programs.

TensorFlow 2: every path under the in-memory ``ram://`` filesystem, in this process: train,
stop, resume, rotate checkpoints, evaluate every checkpoint, export, predict; the numbers equal
those of the same commands on the local disk.  TensorFlow 1.15: ``s3://`` against a real
S3-compatible server (moto) on the loopback address, started and stopped by the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.request
import uuid

import pytest

from vgg_keras import compat, documents, rundir, storage

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TRAIN = (
    "--preset", "demo", "--width_multiplier", "0.0625", "--mode", "train", "--progress", "false",
    "--save_checkpoints_steps", "5", "--keep_checkpoint_max", "3", "--display_every", "5",
)  # fmt: skip


def copy_folder(source: str, target: str) -> None:
    storage.makedirs(target)
    for name in storage.listdir(source):
        if storage.isfile(os.path.join(source, name)):
            storage.copyfile(os.path.join(source, name), os.path.join(target, name))


def run_loop(script_runner, data: str, root: str, image: str) -> dict:
    """Train 15 steps, resume to 30, evaluate every checkpoint, export, predict; what came out."""
    run, export = os.path.join(root, "run"), os.path.join(root, "export")
    for steps in (15, 30):
        args = (*TRAIN, "--data_dir", data, "--log_dir", run, "--max_train_steps", str(steps))
        proc = script_runner("run_train.py", *args)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"resumed from {run}/model.ckpt-15 at step 15" in proc.stdout
    proc = script_runner("run_eval.py", "--eval_dir", run, "--all-ckpts")
    assert proc.returncode == 0, proc.stderr[-2000:]
    with storage.open(os.path.join(run, rundir.results_name())) as f:
        results = [{k: r[k] for k in ("step", "top1", "top5", "loss")} for r in json.load(f)]
    proc = script_runner("run_export.py", "--ckpt", run, "--output", export)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = script_runner("run_predict.py", "--model", export, image)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {
        "checkpoints": [os.path.basename(p) for p in rundir.list_checkpoints(run)],
        "results": results,
        "export": sorted(storage.listdir(export)),
        "prediction": proc.stdout.replace(image, "IMAGE"),
        "history": documents.read_json(os.path.join(run, rundir.CONFIG_FILE), "")["run"]["history"],
    }


@pytest.fixture(scope="module")
def store() -> str:
    """An empty store: ram:// (TensorFlow 2), or a bucket of a local S3 server (TF 1.15)."""
    if not compat.TF1:
        yield f"ram://{uuid.uuid4().hex}"
        return
    with s3_server() as endpoint:
        bucket = "vgg-keras"
        urllib.request.urlopen(urllib.request.Request(f"http://{endpoint}/{bucket}", method="PUT"))
        settings = dict(
            S3_ENDPOINT=endpoint, S3_USE_HTTPS="0", S3_VERIFY_SSL="0", AWS_REGION="us-east-1",
            AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
        )  # fmt: skip
        saved = {name: os.environ.get(name) for name in settings}
        os.environ.update(settings)  # read by TensorFlow's S3 client when it is first made
        try:
            yield f"s3://{bucket}"
        finally:
            for name, value in saved.items():
                os.environ.pop(name) if value is None else os.environ.update({name: value})


@contextlib.contextmanager
def s3_server():
    """moto's S3 server on a free loopback port, from a Python >= 3.9 (``MOTO_PYTHON``, or the
    TF 2 stack's .venv beside this one); yields its ``host:port``."""
    python = os.environ.get("MOTO_PYTHON") or os.path.join(REPO_ROOT, ".venv", "bin", "python")
    found = subprocess.run([python, "-c", "import moto.server"], capture_output=True)
    if found.returncode != 0:
        pytest.skip(f"no moto server: {python} -m pip install 'moto[server]' (make install)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [python, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:  # until it answers: the event, with a deadline
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except OSError:
                assert server.poll() is None, "the moto server exited"
                assert time.monotonic() < deadline, "the moto server did not answer in 60 s"
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait()


def test_the_loop_in_a_store_gives_the_numbers_of_the_local_disk(
    script_runner, demo_dir, jpeg_encoder, tmp_path, store
):
    import numpy as np

    copy_folder(demo_dir, f"{store}/data")
    image = jpeg_encoder(np.full((28, 28), 200, np.uint8))
    for root in (str(tmp_path), store):
        with storage.open(os.path.join(root, "digit.jpg"), "wb") as f:
            f.write(image)

    on_disk = run_loop(script_runner, demo_dir, str(tmp_path / "out"), str(tmp_path / "digit.jpg"))
    in_store = run_loop(script_runner, f"{store}/data", f"{store}/out", f"{store}/digit.jpg")

    assert on_disk["checkpoints"] == ["model.ckpt-20", "model.ckpt-25", "model.ckpt-30"]
    assert [r["step"] for r in on_disk["results"]] == [20, 25, 30]
    for name in ("checkpoints", "results", "export", "prediction"):
        assert in_store[name] == on_disk[name], name
    assert [e["step"] for e in in_store["history"]] == [0, 15]


# A scheme no filesystem serves; a bucket this machine cannot reach (no network here: the name
# does not resolve; with one, the bucket does not exist) or may not read.  TF 1.15's GCS client
# retries for minutes before it gives up (docs/storage.md): the TF 2 suite's case.
BAD_URLS = [
    "nosuchfs://bucket/x",
    pytest.param(
        "gs://vgg-keras-no-such-bucket/x",
        marks=pytest.mark.skipif(compat.TF1, reason="TF 1.15's GCS client retries for minutes"),
    ),
]


@pytest.mark.parametrize("flag", ["--data_dir", "--log_dir"])
@pytest.mark.parametrize("url", BAD_URLS)
def test_a_bad_url_or_an_unreachable_store_is_one_line_naming_it(
    script_runner, demo_dir, tmp_path, flag, url
):
    paths = {"--data_dir": demo_dir, "--log_dir": str(tmp_path / "run")}
    paths[flag] = url
    args = [a for pair in paths.items() for a in pair]
    proc = script_runner("run_train.py", *TRAIN, *args, "--max_train_steps", "1")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and url in line


@pytest.mark.skipif(compat.TF1, reason="ram:// is a TensorFlow 2 filesystem")
def test_the_converter_writes_the_same_dataset_into_a_store(tmp_path, store):
    from conftest import write_photo_folder

    from vgg_keras.data import info
    from vgg_keras.tools import convert

    src = write_photo_folder(str(tmp_path / "photos"), per_class=4)
    outputs = {"disk": str(tmp_path / "dataset"), "store": f"{store}/dataset"}
    for out in outputs.values():
        args = [src, out, "--val_fraction", "0.25", "--workers", "1"]
        assert convert.main(args) == 0
    on_disk, in_store = (info.read_info(out) for out in outputs.values())
    assert in_store == {**on_disk, "name": in_store["name"]} and on_disk["splits"]["train"] > 0
    for name in on_disk["files"]:
        with open(os.path.join(outputs["disk"], name), "rb") as a:
            with storage.open(os.path.join(outputs["store"], name), "rb") as b:
                assert a.read() == b.read(), name
