"""Structured logs: one JSON object per line on stderr, under the `vae` logger tree.

Call sites pass their structured fields as `extra={"fields": {...}}`; nothing else is
serialised, so an image or a key can reach a log line only if a call site names it.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import orjson

ROOT_LOGGER = "vae"


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "message", ...fields}`; tracebacks under `exc_info`."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure_logging(level: str) -> None:
    """Give the `vae` loggers one JSON handler on stderr (idempotent)."""
    logger = logging.getLogger(ROOT_LOGGER)
    logger.setLevel(level.upper())
    logger.propagate = False  # uvicorn's root handlers would print each line a second time
    if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
