"""Structured logs: one event name per lifecycle step, a sentence per record, two formatters.

Every record goes to the `stabilizer_asgi` logger. Its message is a sentence that reads on its
own under any formatter (uvicorn's, `logging.basicConfig()`'s): the event's template below,
filled in from its fields. The event name (a constant below, which tests and log pipelines can
match on) and the fields are also record attributes, set through `extra`: `event`, `session`,
`client`, `remote`, `code`, `reason`, `duration_ms`, `rtt_ms`, ... `JsonFormatter` writes them
as keys of the line's JSON object.

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
"""drain() finished: closed, failed, parked (sessions moved to the cluster store), duration_ms."""
SHUTDOWN = "shutdown"
"""shutdown() finished: closed, failed, duration_ms."""
HOOK_FAILED = "hook_failed"
"""ERROR. A hook raised: hook, session, error."""
SECRET_GENERATED = "secret_generated"
"""WARNING. No secret configured; a random per-process token key is used (no fields)."""
SIGNAL_RECEIVED = "signal_received"
"""The sidecar got a shutdown signal: signal, action ("drain" or "exit")."""

# Cluster mode (backends/redis.py; cluster.py).
CLUSTER_UP = "cluster_up"
"""The node is subscribed to its cluster and caught up: node, caught_up (read from history)."""
CLUSTER_DOWN = "cluster_down"
"""WARNING. The node lost Redis or its subscription; its own sessions carry on: node, error."""
CLUSTER_DEAF = "cluster_deaf"
"""WARNING. The probe through Redis did not come back: the subscription is rebuilt: node."""
CLUSTER_GAP = "cluster_gap"
"""ERROR. Publications were lost before this node read them: node, origin, group, missed."""
CLUSTER_EPOCH_CHANGED = "cluster_epoch_changed"
"""WARNING. Redis lost its data (a restart without persistence, a failover): node."""
CLUSTER_OUTBOX_OVERFLOW = "cluster_outbox_overflow"
"""ERROR. Publications did not fit the outbox while Redis was unreachable: node, dropped, detail
(logged at the 1st, 10th, 100th, ... drop)."""
CLUSTER_NOT_STARTED = "cluster_not_started"
"""WARNING. A connection arrived before the cluster backend was started (no lifespan ran)."""
CLUSTER_GAP_CLOSED = "cluster_gap_closed"
"""WARNING. Publications for a group (None: everyone) were lost: group, sessions, closed (the
opted-in sessions closed 1012 so their clients resync with reason "gap")."""
PARKED = "parked"
"""A detached session left this node for the cluster store (a drain, or another node's resume
asked for it): session, client, why ("drain", "shutdown" or "hand-over")."""
ADOPTED = "adopted"
"""A session came to this node from another (claimed from the cluster store for a resume):
session, client, mailbox (frames that waited for it)."""
NOT_MOVABLE = "not_movable"
"""WARNING. A detached session could not be parked (its data is not JSON-serializable): it
stays here and is lost if this node exits: session, client, error."""
CLUSTER_PARK_FAILED = "cluster_park_failed"
"""ERROR. Parking or claiming sessions through Redis failed: node, sessions, error."""

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
    CLUSTER_UP,
    CLUSTER_DOWN,
    CLUSTER_DEAF,
    CLUSTER_GAP,
    CLUSTER_EPOCH_CHANGED,
    CLUSTER_OUTBOX_OVERFLOW,
    CLUSTER_NOT_STARTED,
    CLUSTER_GAP_CLOSED,
    PARKED,
    ADOPTED,
    NOT_MOVABLE,
    CLUSTER_PARK_FAILED,
)

# The message of each event's records: a `str.format` template over the event's fields.
CONNECTED_MESSAGE = (
    "Session {session} connected from {remote} (client {client}, opted in: {opted_in})"
)
RESUMED_MESSAGE = (
    "Session {session} resumed from {remote} (client {client}, {replayed} frames replayed)"
)
DETACHED_MESSAGE = (
    "Session {session} lost its connection (close code {code}, reason {reason}) and stays "
    "resumable (client {client})"
)
DISCONNECTED_MESSAGE = (
    "Session {session} ended (close code {code}, reason {reason}) after {duration_ms} ms "
    "(client {client})"
)
HEARTBEAT_TIMEOUT_MESSAGE = (
    "Session {session} from {remote} sent nothing within heartbeat_timeout of a ping: "
    "closing it with 1011 (client {client})"
)
REJECTED_MESSAGE = "Refused a websocket handshake from {remote}: {reason}"
EVICTED_MESSAGE = (
    "Session {session} lost its data to stay within max_total_memory "
    "(eviction {policy}, client {client})"
)
SLOW_CONSUMER_MESSAGE = (
    "Session {session} does not read fast enough: closing it with 1008 (client {client})"
)
DRAIN_STARTED_MESSAGE = "Draining {connections} connections over {period} s"
DRAINED_MESSAGE = (
    "Drain finished in {duration_ms} ms: {closed} closed, {failed} failed, {parked} sessions "
    "parked in the cluster store"
)
SHUTDOWN_MESSAGE = "Shutdown finished in {duration_ms} ms: {closed} closed, {failed} failed"
HOOK_FAILED_MESSAGE = "Hook {hook} failed for session {session}: {error}"
SECRET_GENERATED_MESSAGE = (
    "No secret configured: generated a random per-process token secret; resume tokens will "
    "not survive a restart or work across workers"
)
SIGNAL_RECEIVED_MESSAGE = "Received {signal}: {action}"
CLUSTER_UP_MESSAGE = (
    "Cluster node {node} is subscribed and caught up ({caught_up} publications read from history)"
)
CLUSTER_DOWN_MESSAGE = (
    "Cluster node {node} lost Redis ({error}): serving its own sessions, publications wait in "
    "the outbox"
)
CLUSTER_DEAF_MESSAGE = (
    "Cluster node {node} did not get its own probe back: its subscription is deaf, rebuilding it"
)
CLUSTER_GAP_MESSAGE = (
    "Cluster node {node} lost {missed} publications of node {origin} (group {group}) before "
    "reading them"
)
CLUSTER_EPOCH_CHANGED_MESSAGE = (
    "Cluster node {node}: Redis lost its data (restart without persistence or failover)"
)
CLUSTER_OUTBOX_OVERFLOW_MESSAGE = "Cluster node {node} dropped {dropped} publications: {detail}"
CLUSTER_NOT_STARTED_MESSAGE = (
    "A connection arrived but the cluster backend was never started (it starts with the app's "
    "lifespan, which has not run): this node serves its own sessions only"
)
CLUSTER_GAP_CLOSED_MESSAGE = (
    "Publications for group {group} were lost: {closed} of {sessions} sessions closed with 1012 "
    "to resync"
)
PARKED_MESSAGE = "Session {session} moved to the cluster store ({why}; client {client})"
ADOPTED_MESSAGE = (
    "Session {session} taken over from the cluster store ({mailbox} frames waited for it; "
    "client {client})"
)
NOT_MOVABLE_MESSAGE = (
    "Session {session} cannot move to another node and is lost if this node exits: {error} "
    "(client {client})"
)
CLUSTER_PARK_FAILED_MESSAGE = (
    "Cluster node {node} could not move {sessions} sessions through Redis: {error}"
)

MESSAGES = {name: globals()[name.upper() + "_MESSAGE"] for name in EVENTS}
"""Event name → its message template."""

# Attributes every LogRecord has; anything else on a record came in through `extra`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's ANSI-coloured duplicate of the message
}


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log lifecycle event `name`: its sentence, with `fields` (and `event=name`) in `extra`."""
    if logger.isEnabledFor(level):
        message = MESSAGES[name].format_map(_Shown({k: _shown(v) for k, v in fields.items()}))
        fields["event"] = name
        # Complete text, no %-args: a `%` in a field cannot break the record's formatting.
        logger.log(level, message, extra=fields)


class _Shown(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "-"  # a field the caller did not give: the record is still logged


def _shown(value: object) -> str:
    """A field as it reads in a sentence: `ip:port` for an address, `-` for nothing."""
    if value is None or value == "":
        return "-"
    if isinstance(value, tuple | list) and len(value) == 2 and isinstance(value[1], int):
        return f"{value[0]}:{value[1]}"
    return str(value)


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
