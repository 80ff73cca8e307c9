"""Errors a user can act on, and the CLI wrapper that turns them into one line and an exit code."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Callable

EXIT_FAILED = 1  # the run stopped on a fault it explained in one line (e.g. disk full)
EXIT_USAGE = 2
EXIT_NONFINITE = 3  # a NaN/Inf loss (--nan_policy stop) or weights: a restart would repeat it
EXIT_SIGINT = 130


class UsageError(Exception):
    """Bad usage or bad input: printed as one line naming the flag or file, exit code 2."""


class RunError(Exception):
    """A run that cannot go on (a checkpoint cannot be written): one line, exit code 1."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C with what the user should know about it (``run_cli`` prints it)."""


@contextlib.contextmanager
def on_interrupt(message: str):
    """Ctrl-C inside becomes ``Interrupted(message)``: the one place that handles Ctrl-C,
    ``run_cli``, then prints ``message`` instead of a bare "interrupted"."""
    try:
        yield
    except Interrupted:
        raise
    except KeyboardInterrupt:
        raise Interrupted(message) from None


# Lines of a TensorFlow graph error that say where, not what.
_TF_BOILERPLATE = ("Graph execution error", "Detected at node", "Node:", "File ", "[[", "Original")


def reason(err: Exception) -> str:
    """The line of ``err``'s message that says what went wrong, for a one-line message.

    TensorFlow's graph errors open with "Graph execution error:" and the node's stack (file
    and code lines); the cause (a file name and the OS's reason, a checksum mismatch) is the
    line before the ``[[node ...]]`` line, and TF 1.15 appends the stack after it.  Eager errors
    wrap the cause in ``{{function_node ...}}`` and ``[Op:...]``.  An OSError's is the OS's
    reason ("No space left on device").
    """
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    text = getattr(err, "message", None) or str(err)
    text = text.split("Original stack trace", 1)[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    node_lines = [i for i, line in enumerate(lines) if line.startswith("[[")]
    if node_lines and node_lines[0] > 0:
        line = lines[node_lines[0] - 1]
    else:
        useful = [line for line in lines if not line.startswith(_TF_BOILERPLATE)]
        line = (useful or [""])[0]
    line = re.sub(r"\{\{[^}]*\}\}\s*", "", line)
    line = re.sub(r"\s*\[Op:[^\]]*\].*$", "", line).strip()
    return line or type(err).__name__


def one_line(message: str, limit: int = 400) -> str:
    """``message`` as one line of at most ``limit`` characters (a value quoted in it may be
    anything a file held)."""
    line = " ".join(message.split())
    return line if len(line) <= limit else line[: limit - 4] + " ..."


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run ``main``; UsageError and RunError become one line on stderr and exit code 2 or 1,
    Ctrl-C before a handler of its own is installed exits 130 without a traceback."""
    try:
        return int(main(argv) or 0)
    except (UsageError, RunError) as err:
        print(f"error: {one_line(str(err))}", file=sys.stderr)
        return EXIT_USAGE if isinstance(err, UsageError) else EXIT_FAILED
    except KeyboardInterrupt as err:
        print(str(err) or "interrupted", file=sys.stderr)
        return EXIT_SIGINT
