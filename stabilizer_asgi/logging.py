"""Structured logs: one event name per lifecycle step, fields in `extra`, and two formatters.

Every record goes to the `stabilizer_asgi` logger. Its message is the event name (a constant
below, which tests and log pipelines can match on) and its fields are record attributes, set
through `extra`: `session`, `client`, `remote`, `code`, `reason`, `duration_ms`, `rtt_ms`, ...

Tokens, secrets and payloads are never logged. Nothing is logged per frame above DEBUG.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

LOGGER_NAME = "stabilizer_asgi"

# Lifecycle events (INFO unless noted).
CONNECTED = "connected"
"""A handshake was accepted by the app: session, client, remote, opted_in."""
RESUMED = "resumed"
"""A dropped session was resumed: session, client, remote, replayed."""
DETACHED = "detached"
"""A session lost its connection and stays resumable: session, client, code, reason."""
DISCONNECTED = "disconnected"
"""A session ended: session, client, code, reason, duration_ms, rtt_ms, expired."""
HEARTBEAT_TIMEOUT = "heartbeat_timeout"
"""No inbound frame within heartbeat_timeout after a ping: session, client, remote, rtt_ms."""
REJECTED = "rejected"
"""A handshake was denied before the app ran: reason, remote."""
EVICTED = "evicted"
"""WARNING. A session's data was evicted for max_total_memory: session, client, policy."""
SLOW_CONSUMER = "slow_consumer"
"""WARNING. A client did not read fast enough (slow_consumer="close"): session, client."""
DRAIN_STARTED = "drain_started"
"""drain() began: connections, period."""
DRAINED = "drained"
"""drain() finished: closed, failed, duration_ms."""
SHUTDOWN = "shutdown"
"""shutdown() finished: closed, failed, duration_ms."""
HOOK_FAILED = "hook_failed"
"""ERROR. A hook raised: hook, session, error."""
SECRET_GENERATED = "secret_generated"
"""WARNING. No secret configured; a random per-process token key is used: detail."""
SIGNAL_RECEIVED = "signal_received"
"""The sidecar got a shutdown signal: signal, action ("drain" or "exit")."""

EVENTS = (
    CONNECTED,
    RESUMED,
    DETACHED,
    DISCONNECTED,
    HEARTBEAT_TIMEOUT,
    REJECTED,
    EVICTED,
    SLOW_CONSUMER,
    DRAIN_STARTED,
    DRAINED,
    SHUTDOWN,
    HOOK_FAILED,
    SECRET_GENERATED,
    SIGNAL_RECEIVED,
)

# Attributes every LogRecord has; anything else on a record came in through `extra`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's ANSI-coloured duplicate of the message
}


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log lifecycle event `name` with `fields` as record attributes (and `event=name`)."""
    if logger.isEnabledFor(level):
        fields["event"] = name
        logger.log(level, name, extra=fields)


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The attributes a record got through `extra`."""
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD and not key.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, process, message and every `extra` field.

    `logging.basicConfig()` then `logging.getLogger().handlers[0].setFormatter(JsonFormatter())`,
    or `{"()": "stabilizer_asgi.logging.JsonFormatter"}` in a `dictConfig` (uvicorn
    `--log-config`). Works for any logger, not only `stabilizer_asgi`.
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "message": record.getMessage(),
        }
        out.update(fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, separators=(",", ":"), ensure_ascii=False)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """UTC, ISO 8601 with milliseconds: `2024-05-01T12:00:00.123Z`."""
        stamp = time.strftime(datefmt or "%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    """`LEVEL:    message key=value ...`: uvicorn's look, with the `extra` fields appended."""

    def format(self, record: logging.LogRecord) -> str:
        head = f"{record.levelname + ':':<9} {record.getMessage()}"
        extra = fields(record)
        extra.pop("event", None)
        parts = [head, *(f"{key}={_text(value)}" for key, value in extra.items())]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text(value: object) -> str:
    if isinstance(value, str):
        return value if value and " " not in value and '"' not in value else json.dumps(value)
    if isinstance(value, tuple | list) and len(value) == 2 and isinstance(value[1], int):
        return f"{value[0]}:{value[1]}"
    return str(value)
