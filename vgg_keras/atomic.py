"""Writing a file so that a reader never sees it half-written: a temporary name, then a rename.

``os.replace`` is atomic on POSIX within one folder, so a reader (a watching evaluator, a
resumed run, a second converter) finds either the old file or the whole new one.
"""

from __future__ import annotations

import contextlib
import os
import shutil

TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def replacing(path: str):
    """Yield the temporary name (a file or a folder) to write ``path`` under; renamed to
    ``path`` on success, removed on failure."""
    tmp = path.rstrip("/") + TMP_SUFFIX
    try:
        yield tmp
    except BaseException:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        raise
    os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with replacing(path) as tmp, open(tmp, "w") as f:
        f.write(text)
