"""Errors a user can act on, and the CLI wrapper that turns them into one line and an exit code."""

from __future__ import annotations

import sys
from collections.abc import Callable

EXIT_USAGE = 2
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class UsageError(Exception):
    """Bad usage or bad input: printed as one line naming the flag or file, exit code 2."""


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run ``main`` and map UsageError to a one-line message on stderr and exit code 2."""
    try:
        return int(main(argv) or 0)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
