"""The commands' stdout, whose write failures are named as such.

``llmc-rag export > /data/full/x.jsonl`` fails with ``ENOSPC`` while writing,
not while reading the store; without this wrapper that ``OSError`` reached the
store's handler in ``cli.py`` and was reported as "state unusable: …llmc-rag.db:
No space left on device". :class:`CheckedOutput` turns every failed write or
flush of stdout into :class:`OutputError`, which ``cli.py`` reports naming the
output. A closed pipe (``| head``) stays ``BrokenPipeError``: the reader left,
which is no error.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO


class OutputError(Exception):
    """Writing or flushing stdout failed (disk full, I/O error, …); ``str()`` says why."""


class CheckedOutput:
    """A text stream wrapping ``stream`` (stdout): ``write`` and ``flush`` raise
    :class:`OutputError` instead of ``OSError``; every other attribute
    (``isatty``, ``fileno``, ``encoding``, ``buffer``) is the wrapped stream's."""

    def __init__(self, stream: TextIO):
        self._stream = stream

    def write(self, text: str) -> int:
        """Write ``text``; returns the characters written. Raises OutputError, BrokenPipeError."""
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputError(exc.strerror or str(exc)) from exc

    def flush(self) -> None:
        """Flush the wrapped stream. Raises OutputError, BrokenPipeError."""
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputError(exc.strerror or str(exc)) from exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def discard_stdout() -> None:
    """Point fd 1 at /dev/null, so the interpreter's last flush of what is still
    buffered neither fails again nor prints "Exception ignored" at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.__stdout__.fileno() if sys.__stdout__ else 1)
    finally:
        os.close(devnull)
