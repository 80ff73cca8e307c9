"""Writing a file so that a reader never sees it half-written: a temporary name, then a rename.

A rename is atomic on POSIX within one folder, so a reader (a watching evaluator, a resumed
run, a second converter) finds either the old file or the whole new one.  On an object store
(``gs://``, ``s3://``) the rename is a copy, and an object appears only once it is whole, so a
file is still never seen half-written; a folder is written in place there (``replacing``).

The temporary name lies in a staging folder made for this one write (beside the target,
``.<name>.<uuid4>.tmp``: 122 random bits), and only that folder is removed afterwards: a file or folder of the user's that happens to be called ``<name>.tmp`` is
never touched.  A process killed mid-write leaves its hidden staging folder behind; the one
who started the writers removes it once they have ended (``discard_staging``: the converter,
after an interruption).
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid

from vgg_keras import storage

TMP_SUFFIX = ".tmp"


def _staging_name(name: str, token: str) -> str:
    """The staging folder of one write of ``name``, made unique by ``token`` (32 hex digits)."""
    return f".{name}.{token}{TMP_SUFFIX}"


@contextlib.contextmanager
def replacing(path: str, folder: bool = False):
    """Yield a temporary name (a file, or with ``folder`` a folder, not yet existing) to write
    ``path`` under; renamed to ``path`` on success (through a symlink: to its target), discarded
    on failure.  A store cannot rename a folder (or only file by file): there, a ``folder`` is
    written in place, its readers wait for the file written last (a manifest), and a failure
    deletes it."""
    target = storage.realpath(path)
    if folder and storage.is_url(target):
        try:
            yield target
        except BaseException:
            storage.rmtree(target)
            raise
        return
    parent, name = storage.split(target)
    # Named before it is made, so that a signal between making it and the ``try`` cannot
    # leave it behind (mkdtemp's name is known only once the folder exists).
    staging = os.path.join(parent, _staging_name(name, uuid.uuid4().hex))
    try:
        storage.makedirs(staging)
        tmp = os.path.join(staging, name)
        yield tmp
        storage.replace(tmp, target)
    finally:
        storage.rmtree(staging)


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with replacing(path) as tmp, storage.open(tmp, "w") as f:
        f.write(text)


def discard_staging(path: str) -> None:
    """Remove what writes of ``path`` left in its staging folders: those of processes stopped
    in their cleanup (a second signal, a kill).  Only the names ``replacing`` makes
    (``.<name>.<32 hex digits>.tmp``) are touched; call it once every writer of ``path`` has
    ended."""
    parent, name = storage.split(storage.realpath(path))
    before, after = _staging_name(name, "\0").split("\0")  # (no file name holds a NUL)
    staged = re.compile(f"{re.escape(before)}[0-9a-f]{{32}}{re.escape(after)}")
    if storage.isdir(parent):
        for entry in storage.listdir(parent):
            if staged.fullmatch(entry):
                storage.rmtree(os.path.join(parent, entry))
