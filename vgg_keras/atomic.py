"""Writing a file so that a reader never sees it half-written: a temporary name, then a rename.

``os.replace`` is atomic on POSIX within one folder, so a reader (a watching evaluator, a
resumed run, a second converter) finds either the old file or the whole new one.

The temporary name lies in a staging folder made for this one write (beside the target,
``.<name>.<uuid4>.tmp``: 122 random bits), and only that folder is removed afterwards: a file or folder of the user's that happens to be called ``<name>.tmp`` is
never touched.  A process killed mid-write leaves its hidden staging folder behind; nothing
deletes it automatically, since nothing can tell it from a user's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid

TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def replacing(path: str):
    """Yield a temporary name (a file or a folder, not yet existing) to write ``path`` under;
    renamed to ``path`` on success (through a symlink: to its target), discarded on failure."""
    target = os.path.realpath(path)
    parent, name = os.path.split(target)
    # Named before it is made, so that a signal between making it and the ``try`` cannot
    # leave it behind (mkdtemp's name is known only once the folder exists).
    staging = os.path.join(parent, f".{name}.{uuid.uuid4().hex}{TMP_SUFFIX}")
    try:
        os.mkdir(staging, 0o700)
        tmp = os.path.join(staging, name)
        yield tmp
        os.replace(tmp, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with replacing(path) as tmp, open(tmp, "w") as f:
        f.write(text)
