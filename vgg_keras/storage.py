"""Where files live: a local disk, or any filesystem TensorFlow has (``gs://``, ``s3://``,
``hdfs://``, ``ram://``).  Every file the programs read, write, list or delete goes through here.

A local path takes the operating system's own calls, as before (atomic rename, ``flock``); a URL
(``scheme://...``) takes ``tf.io.gfile``, imported on first use, so the rest of the code does
not know the difference.  A store's errors are OSErrors, as a disk's are: FileNotFoundError
when nothing is there, otherwise ``StoreError``, which is also a UsageError (one line naming the
URL, exit 2, wherever nobody handles it: an unknown scheme, an unreachable bucket).  What each
kind of store guarantees, and what the programs do about it: docs/storage.md.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import glob as local_glob
import os
import posixpath
import re
import shutil

from vgg_keras.errors import UsageError

_URL = re.compile(r"^[A-Za-z][\w+.-]*://")


class StoreError(UsageError, OSError):
    """A store's failure other than "not found": ``filename`` the URL, ``strerror`` why."""

    def __init__(self, path: str, reason: str):
        OSError.__init__(self, errno.EIO, reason, path)

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def is_url(path) -> bool:
    return bool(_URL.match(str(path)))


def normpath(path: str) -> str:
    """``path`` without ``.``, ``..`` and doubled or trailing slashes (a URL keeps its
    ``scheme://``)."""
    if not is_url(path):
        return os.path.normpath(path)
    scheme, rest = path.split("://", 1)
    return f"{scheme}://{posixpath.normpath(rest) if rest else ''}"


def split(path: str) -> tuple[str, str]:
    """(folder, name) of ``path``; a store's top level keeps its ``scheme://``."""
    parent, name = os.path.split(path)
    return (parent + "//" if is_url(path) and parent.endswith(":") else parent), name


def abspath(path: str) -> str:
    return normpath(path) if is_url(path) else os.path.abspath(path)


def realpath(path: str) -> str:
    """The path with symlinks resolved (a URL has none)."""
    return normpath(path) if is_url(path) else os.path.realpath(path)


def same_folder(a: str, b: str) -> bool:
    """True when the existing folders ``a`` and ``b`` are one."""
    if is_url(a) or is_url(b):
        return normpath(a) == normpath(b)
    return os.path.isdir(a) and os.path.isdir(b) and os.path.samefile(a, b)


def exists(path: str) -> bool:
    if not is_url(path):
        return os.path.exists(path)
    return _gfile(path).exists(path) and _listed(path)


def isdir(path: str) -> bool:
    if not is_url(path):
        return os.path.isdir(path)
    return exists(path) and _gfile(path).isdir(path)  # exists: a store's error is raised


# TensorFlow's in-memory filesystem, the tests' store, differs from a real one twice: it answers
# "exists" for any prefix of a name, and writing a file keeps its old bytes.  Both are mended
# here, for ram:// only (elsewhere each would cost a request).
_RAM = "ram://"


def _listed(path: str) -> bool:
    """False where the store answers for a name that is only the start of another (``ram://``
    says ``ram://run/model.ckpt-4`` exists when ``model.ckpt-40.index`` does): asks the
    parent's listing there, takes the store's word elsewhere."""
    if not path.startswith(_RAM):
        return True
    parent, name = posixpath.split(normpath(path))
    return parent.endswith(":") or name in listdir(parent)  # "ram:": the top has no parent


def isfile(path: str) -> bool:
    if not is_url(path):
        return os.path.isfile(path)
    return exists(path) and not _gfile(path).isdir(path)


def listdir(path: str) -> list[str]:
    """The names in the folder ``path`` (a store's sub-folders without their trailing ``/``)."""
    if not is_url(path):
        return os.listdir(path)
    return [name.rstrip("/") for name in _gfile(path).listdir(path)]


def glob(pattern: str) -> list[str]:
    return _gfile(pattern).glob(pattern) if is_url(pattern) else local_glob.glob(pattern)


escape = local_glob.escape  # tf.io.gfile.glob takes the same wildcards


def walk(top: str):
    """``os.walk``'s (folder, sub-folders, file names), top-down."""
    if not is_url(top):
        yield from os.walk(top)
        return
    with _errors(top):
        for folder, dirs, files in _gfile(top).walk(top):
            yield folder, [d.rstrip("/") for d in dirs], files


def makedirs(path: str) -> None:
    """Make the folder ``path`` and its parents (present already, or a store's top level:
    nothing to do)."""
    if not is_url(path):
        os.makedirs(path, exist_ok=True)
    elif not path.endswith("://"):
        _gfile(path).makedirs(path)


def remove(path: str) -> None:
    _gfile(path).remove(path) if is_url(path) else os.remove(path)


def rmtree(path: str, ignore_errors: bool = True) -> None:
    """Delete the folder ``path`` with everything in it (as far as possible, by default)."""
    if not is_url(path):
        shutil.rmtree(path, ignore_errors=ignore_errors)
        return
    with contextlib.suppress(*((OSError,) if ignore_errors else ())):
        _gfile(path).rmtree(path)


def replace(source: str, target: str) -> None:
    """Rename ``source`` to ``target``, replacing it: atomic on a local disk; a store may copy."""
    if is_url(target):
        _gfile(target).rename(source, target, overwrite=True)
    else:
        os.replace(source, target)


def copyfile(source: str, target: str) -> None:
    if is_url(source) or is_url(target):
        _gfile(target if is_url(target) else source).copy(source, target, overwrite=True)
    else:
        shutil.copyfile(source, target)


def getsize(path: str) -> int:
    return _gfile(path).stat(path).length if is_url(path) else os.path.getsize(path)


def getmtime(path: str) -> float:
    """Seconds since the epoch (0 on a store that keeps no times, as ``ram://``)."""
    return _gfile(path).stat(path).mtime_nsec / 1e9 if is_url(path) else os.path.getmtime(path)


def open(path: str, mode: str = "r", encoding: str | None = None):  # noqa: A001
    """A file object of ``path`` (``encoding`` for a local text file; a store's is UTF-8)."""
    if not is_url(path):
        return builtins.open(path, mode, encoding=encoding)
    return _StoreFile(path, mode)


class _Guarded:
    """An object's methods (``tf.io.gfile``'s functions, a ``GFile``'s), with their errors
    turned into OSErrors naming ``path``."""

    def __init__(self, target, path: str):
        self._target, self.name = target, path

    def __getattr__(self, name: str):
        function = getattr(self._target, name)

        def call(*args, **kwargs):
            with _errors(self.name):
                return function(*args, **kwargs)

        return call


class _StoreFile(_Guarded):
    """A ``tf.io.gfile.GFile`` whose errors are OSErrors, as a local file's."""

    def __init__(self, path: str, mode: str):
        if "w" in mode and path.startswith(_RAM) and _gfile(path).exists(path):
            _gfile(path).remove(path)  # ram:// would write after the old bytes
        super().__init__(_gfile(path).GFile(path, mode), path)
        if "r" in mode:
            self.size()  # opening is lazy: a missing file fails here, as open's would

    def __iter__(self):
        return iter(self.read().splitlines(keepends=True))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _gfile(path: str) -> _Guarded:
    """``tf.io.gfile``, its errors turned into OSErrors naming ``path``."""
    from vgg_keras.compat import tf

    return _Guarded(tf.io.gfile, path)


@contextlib.contextmanager
def _errors(path: str):
    from vgg_keras.compat import tf

    try:
        yield
    except tf.errors.NotFoundError as err:
        raise FileNotFoundError(errno.ENOENT, _reason(err, "not found"), path) from None
    except tf.errors.OpError as err:
        raise StoreError(path, _reason(err, type(err).__name__)) from None


def _reason(err, default: str) -> str:
    """The first line of a filesystem's message (a store's may be several, or none)."""
    lines = [line.strip() for line in (err.message or "").splitlines() if line.strip()]
    return lines[0] if lines else default
