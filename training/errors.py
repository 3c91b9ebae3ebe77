"""The errors `training/` raises on purpose; each message is one line, fit for a terminal.

    TrainingError            the CLI prints "error: <message>" on stderr and exits 1
     ├── ConfigError         a flag out of range or inconsistent with another
     ├── DataError           a data set missing, unreadable, or empty after filtering
     ├── CheckpointError     a checkpoint missing, unreadable, or from another run
     └── ExportError         the artifact failed its own verification

Anything else escaping the CLI is a bug and keeps its traceback.
"""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class TrainingError(Exception):
    """A failure the user can act on; the message is one line."""


class ConfigError(TrainingError):
    pass


class DataError(TrainingError):
    pass


class CheckpointError(TrainingError):
    pass


class ExportError(TrainingError):
    pass
