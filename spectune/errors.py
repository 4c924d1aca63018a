"""The one error type a user sees, and how the CLI turns it into one line and exit code 2.

Anything the user can get wrong (a path, a field, a file's content) raises `SpectuneError` with a
message that names what was given and what was expected. Everything else is our bug and keeps its
traceback.
"""

from __future__ import annotations

import sys

EXIT_USER_ERROR = 2


class SpectuneError(Exception):
    """A user's mistake, reported as one line (no traceback) with exit code 2."""

    def __init__(self, message: str, *, where: str | None = None):
        # `where` is a file (with :line) or a config field; it goes first so editors can jump to it.
        self.where = where
        self.message = " ".join(message.split())  # one line, whatever the caller formatted
        super().__init__(f"{where}: {self.message}" if where else self.message)


def report(err: SpectuneError) -> int:
    """Print `spectune: error: ...` on stderr and return the exit code."""
    print(f"spectune: error: {err}", file=sys.stderr)
    return EXIT_USER_ERROR
