"""Structured logs: one event name per lifecycle step, fields in `extra`, and a JSON formatter.

Tokens, secrets and payloads are never logged.
"""

from __future__ import annotations

import json
import logging
from typing import Any

CONNECTED = "connected"
DISCONNECTED = "disconnected"
RESUMED = "resumed"
HEARTBEAT_TIMEOUT = "heartbeat_timeout"
REJECTED = "rejected"
EVICTED = "evicted"
SLOW_CONSUMER = "slow_consumer"
DRAIN_STARTED = "drain_started"
DRAINED = "drained"
SHUTDOWN = "shutdown"
HOOK_FAILED = "hook_failed"
SECRET_GENERATED = "secret_generated"

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log lifecycle event `name` with `fields` as record attributes."""
    if logger.isEnabledFor(level):
        fields["event"] = name
        logger.log(level, name, extra=fields)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event, message and every extra field."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        import time

        return time.strftime(datefmt or "%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
