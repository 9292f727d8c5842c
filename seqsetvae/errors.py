"""Errors that stop a stage with a clear message (the CLI prints it and exits non-zero, no traceback)."""

from __future__ import annotations

from pathlib import Path

MAX_EXCERPT_CHARS = 40  # of a user's value (a cell, a params value) quoted in an error message


def excerpt(text: str, limit: int = MAX_EXCERPT_CHARS) -> str:
    """`repr(text)`, cut to `limit` characters with the full length named when longer: what an error
    message quotes of a user's value, so that a 5 MiB value gives a short message."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


class DataError(ValueError):
    """Bad input data. The message names the file and, where there is one, the line: `path:line: what`."""

    def __init__(self, path: str | Path | None, message: str, line: int | None = None):
        self.path = None if path is None else str(path)
        self.line = line
        self.message = message
        where = "" if path is None else (f"{path}:{line}: " if line is not None else f"{path}: ")
        super().__init__(f"{where}{message}")

    def __reduce__(self):  # picklable, so it comes back intact from a worker process (preprocess)
        return type(self), (self.path, self.message, self.line)
