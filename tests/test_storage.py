"""storage.py: local paths and store URLs (TensorFlow's in-memory ``ram://``) behave alike.

The same calls run on a local folder and under ``ram://``; a store's failures are OSErrors that
are also one-line usage errors naming the URL.
"""

from __future__ import annotations

import os
import uuid

import pytest

from vgg_keras import atomic, compat, documents, storage
from vgg_keras.errors import UsageError

# ram:// is TensorFlow 2's; TF 1.15 reaches stores through its built-in s3:// (test_e2e_storage).
needs_ram = pytest.mark.skipif(compat.TF1, reason="ram:// is a TensorFlow 2 filesystem")


@pytest.fixture(params=["local", pytest.param("ram", marks=needs_ram)])
def root(request, tmp_path) -> str:
    """An empty folder: on the local disk, or under ram:// (unique per test)."""
    if request.param == "local":
        return str(tmp_path / "root")
    return f"ram://{uuid.uuid4().hex}/root"


def test_the_same_calls_on_a_disk_and_on_a_store(root):
    assert not storage.exists(root) and not storage.isdir(root)
    storage.makedirs(os.path.join(root, "sub"))
    storage.makedirs(os.path.join(root, "sub"))  # present already: nothing to do
    with storage.open(os.path.join(root, "sub", "a.txt"), "w") as f:
        f.write("one\ntwo\n")
    path = os.path.join(root, "sub", "a.txt")
    assert storage.isfile(path) and not storage.isdir(path)
    assert storage.isdir(os.path.join(root, "sub")) and not storage.isfile(
        os.path.join(root, "sub")
    )
    assert storage.listdir(root) == ["sub"]
    assert storage.getsize(path) == 8
    with storage.open(path) as f:
        assert list(f) == ["one\n", "two\n"]
    with storage.open(path, "a") as f:
        f.write("three\n")
    with storage.open(path, "rb") as f:
        assert f.read() == b"one\ntwo\nthree\n"
    with storage.open(path, "w") as f:  # over a longer file: nothing of it is left
        f.write("one\n")
    assert storage.getsize(path) == 4
    with storage.open(path, "a") as f:
        f.write("two\n")
    assert storage.glob(os.path.join(root, "sub", "*.txt")) == [path]
    walked = [(storage.normpath(d), sorted(files)) for d, _, files in storage.walk(root)]
    assert walked == [(storage.normpath(root), []), (os.path.join(root, "sub"), ["a.txt"])]
    storage.copyfile(path, os.path.join(root, "b.txt"))
    storage.replace(os.path.join(root, "b.txt"), os.path.join(root, "c.txt"))
    assert sorted(storage.listdir(root)) == ["c.txt", "sub"]
    storage.remove(os.path.join(root, "c.txt"))
    storage.rmtree(os.path.join(root, "sub"))
    assert storage.listdir(root) == []


def test_a_name_that_only_starts_another_is_not_there(root):
    """ram:// answers "exists" for any prefix of a name: model.ckpt-4 beside model.ckpt-40."""
    storage.makedirs(root)
    with storage.open(os.path.join(root, "model.ckpt-40.index"), "w") as f:
        f.write("x")
    assert not storage.exists(os.path.join(root, "model.ckpt-4"))
    assert not storage.isdir(os.path.join(root, "model.ckpt-40"))
    assert storage.exists(os.path.join(root, "model.ckpt-40.index"))


def test_missing_files_are_file_not_found_errors(root):
    with pytest.raises(FileNotFoundError):
        storage.open(os.path.join(root, "absent.json"))
    assert documents.read_json(os.path.join(root, "absent.json"), "run settings") == {}


def test_atomic_writes_and_documents_on_a_store(root):
    path = os.path.join(root, "config.json")
    storage.makedirs(root)
    atomic.write_text(path, '{"a": 1}')
    atomic.write_text(path, '{"a": 2}')
    assert documents.read_json(path, "run settings") == {"a": 2}
    assert storage.listdir(root) == ["config.json"]  # no staging folder left behind


def test_a_folder_written_in_place_on_a_store_is_deleted_when_it_fails(root):
    target = os.path.join(root, "export")
    with pytest.raises(RuntimeError), atomic.replacing(target, folder=True) as tmp:
        storage.makedirs(tmp)
        with storage.open(os.path.join(tmp, "part"), "w") as f:
            f.write("half")
        raise RuntimeError("the writer failed")
    assert not storage.exists(target)


@needs_ram
def test_a_bad_url_is_one_usage_error_naming_it():
    with pytest.raises(UsageError) as caught:
        storage.exists("nosuchfs://bucket/data")
    assert str(caught.value).startswith("nosuchfs://bucket/data: ")
    assert "nosuchfs" in caught.value.strerror and isinstance(caught.value, OSError)
    with pytest.raises(UsageError, match="nosuchfs://b/x: unreadable run settings"):
        documents.read_json("nosuchfs://b/x", "run settings")


@pytest.mark.parametrize(
    "path, expected",
    [
        ("ram://a/b/../c/", "ram://a/c"),
        ("gs://bucket//runs/./vgg16", "gs://bucket/runs/vgg16"),
        ("file:///tmp/x/../y", "file:///tmp/y"),
        ("runs/a/../b", "runs/b"),
    ],
)
def test_normpath_keeps_a_urls_scheme(path, expected):
    assert storage.normpath(path) == expected


def test_split_keeps_a_stores_top_level():
    assert storage.split("ram://export") == ("ram://", "export")
    assert storage.split("gs://bucket/runs/x") == ("gs://bucket/runs", "x")
    assert storage.split("runs/x") == ("runs", "x")


def test_discard_staging_removes_only_the_staging_folders_of_that_file(tmp_path):
    target = tmp_path / "train-00000-of-00004"
    staged = tmp_path / f".train-00000-of-00004.{'ab12' * 8}.tmp"
    staged.mkdir()
    (staged / "train-00000-of-00004").write_bytes(b"half a shard")
    kept = [
        tmp_path / ".train-00000-of-00004.tmp",  # a user's: no 32-digit name
        tmp_path / f".train-00001-of-00004.{'cd34' * 8}.tmp",  # another file's
        tmp_path / "train-00000-of-00004.tmp",
    ]
    for path in kept:
        path.mkdir()
    target.write_bytes(b"a whole shard")
    atomic.discard_staging(str(target))
    assert not staged.exists()
    assert all(path.exists() for path in kept) and target.read_bytes() == b"a whole shard"
