"""Sans-I/O core of the reconnecting client: frame codec, session counters, buffers and timers.

It knows no event loop and no socket. The driver tells it that a connection was made or lost,
feeds it every inbound frame and the current time (``now``, monotonic seconds), asks it for the
next deadline, and pulls out what to transmit (``data_to_send()``) and what happened
(``events_received()``), in the manner of websockets' own protocol object.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeGuard
from urllib.parse import quote, unquote_plus

from ..core.wire import FROM_SERVER, RS, as_count, decode_control, encode_control, escape

Frame: TypeAlias = str | bytes
"""One WebSocket data message as it travels: ``str`` is a text frame, ``bytes`` a binary one."""

ACK_EVERY = 32
"""Acknowledge at the latest after this many unacknowledged inbound data frames..."""
ACK_DELAY = 1.0
"""...or this many seconds after the first of them, whichever comes first."""

RECONNECT_CODES = frozenset({1006, 1011, 1012, 1013, 1014})
"""Close codes after which the client resumes: abnormal drop, heartbeat timeout, service restart
or drain, try again later, bad gateway. Every other code is final (1000/1001 a normal end; 1008,
1009 and the app's own 4xxx codes a deliberate close) unless the server sent a `reconnect` hint."""

_NORMAL_CODES = frozenset({1000, 1001, 1005})
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
"""HTTP statuses of a refused handshake that are worth retrying (capacity, drain, overload)."""

_OUR_PARAMS = frozenset({"stabilizer", "stabilizer_resume", "stabilizer_ack"})
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


# -- codec -----------------------------------------------------------------------------------


def encode_data(message: object) -> Frame:
    """The frame for an app message: ``str`` → text (escaped), bytes-like → binary, ``dict`` or
    ``list`` → compact JSON text. Anything else is a ``TypeError``."""
    if isinstance(message, str):
        return escape(message)
    if isinstance(message, (bytes, bytearray, memoryview)):
        return bytes(message)
    if isinstance(message, (dict, list)):
        return _dumps(message)  # JSON never starts with RS: no escaping needed
    raise TypeError(f"cannot send {type(message).__name__}: use str, bytes, dict or list")


def decode_frame(frame: Frame) -> Frame | dict[str, Any] | None:
    """Classify an inbound frame: app data (``str``/``bytes``, unescaped), a control object
    (``dict``), or ``None`` for a control frame that is not valid protocol (bad JSON, nesting,
    unknown type, wrong field types, non-finite or huge numbers, oversize: see
    ``core.wire.decode_control``). Never raises."""
    if isinstance(frame, bytes) or frame[:1] != RS:
        return frame
    if frame[1:2] == RS:
        return frame[1:]
    return decode_control(frame, FROM_SERVER)


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _unescape(frame: Frame) -> Frame:
    return frame[1:] if isinstance(frame, str) and frame[:2] == RS + RS else frame


def build_url(url: str, *, token: str | None = None, ack: int = 0) -> str:
    """``url`` with ``stabilizer=1`` (and, to resume, the token and inbound count) appended.

    The user's own query parameters are kept byte for byte and in order; stale ``stabilizer*``
    parameters of ours are replaced rather than repeated.
    """
    base, hash_mark, fragment = url.partition("#")
    path, _, query = base.partition("?")
    kept = [
        part
        for part in query.split("&")
        if part and unquote_plus(part.partition("=")[0]) not in _OUR_PARAMS
    ]
    kept.append("stabilizer=1")
    if token:  # the server issues "" when it cannot resume: nothing to ask for
        kept.append(f"stabilizer_resume={quote(token, safe='')}")
        kept.append(f"stabilizer_ack={ack}")
    return f"{path}?{'&'.join(kept)}{hash_mark}{fragment}"


def should_reconnect(code: int) -> bool:
    """Whether a connection closed with ``code`` (no `reconnect` hint) is resumed."""
    return code in RECONNECT_CODES


def is_retryable_status(status: int) -> bool:
    """Whether a handshake refused with HTTP ``status`` is retried with backoff."""
    return status in RETRYABLE_STATUSES


def parse_retry_after(value: str | None, *, now_epoch: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), or ``None``."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now_epoch)


# -- events ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """An inbound app message, unescaped, to hand to the caller."""

    data: Frame


@dataclass(frozen=True)
class Opened:
    """A ``hello`` arrived: the connection is usable; ``resumed`` says whether the session was."""

    session_id: str
    resumed: bool


@dataclass(frozen=True)
class ResyncEvent:
    """The server could not resume the session and started a new one.

    Messages may have been lost in both directions, so the app should refetch its state.
    ``unacked`` holds the frames that were transmitted on the old session but never acknowledged.
    The server acknowledges what its app took within a housekeeping tick (at most 1 s), so frames
    the app processed earlier are not listed; those listed may or may not have been processed
    (taken in the last tick, or lost in flight), so they are *not* resent — the app decides.
    Messages that were still waiting to be transmitted are sent on the new session as usual.
    """

    reason: str
    """The server's reason: ``"unknown"``, ``"expired"``, ``"invalid"``, ``"gap"``, or in
    cluster mode ``"lost"`` (the server that held the session died without handing it over).
    Any other value is treated the same way: a resync."""
    old_session_id: str
    new_session_id: str
    unacked: tuple[Frame, ...]
    """The dropped messages, oldest first, as ``send`` encoded them (dicts as JSON text)."""


@dataclass(frozen=True)
class Failure:
    """The connection must be dropped with ``code``: heartbeat timeout or protocol violation."""

    code: int
    reason: str


@dataclass(frozen=True)
class CloseDecision:
    """What to do after a connection ended: resume (after ``delay`` seconds if the server hinted
    one, else after the backoff) or end for good with ``code`` and ``reason``."""

    reconnect: bool
    code: int
    reason: str
    delay: float | None = None


Event: TypeAlias = Message | Opened | ResyncEvent | Failure


# -- the state machine -----------------------------------------------------------------------


class ClientProtocol:
    """Session bookkeeping of one logical client connection across its transport connections.

    Outbound data frames are numbered per session: ``sent`` have been transmitted, the server
    acknowledged ``server_acked`` of them, and the frames in between are kept for resending.
    Frames sent while no connection is open wait in a pending queue. Together they hold at most
    ``max_pending`` frames; the driver makes ``send`` wait beyond that (backpressure) rather than
    drop, which is why this is not a ``core.replay.ReplayBuffer`` (that one evicts the oldest).

    Inbound, it counts data frames (``received``), reports the count to the server in ``ack``
    frames (at the latest every ``ACK_EVERY`` frames or ``ACK_DELAY`` seconds) so the server can
    trim its replay buffer, and asks for exactly the frames after that count when resuming:
    that count is what keeps a replay free of duplicates, since data frames carry no numbers.
    """

    def __init__(
        self,
        url: str,
        *,
        max_pending: int = 1000,
        ping_interval: float = 20.0,
        ping_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.max_pending = max_pending
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout

        self.session_id: str | None = None
        self.token: str | None = None
        self.received = 0
        """Data frames received on this session (across connections)."""
        self.sent = 0
        """Data frames transmitted on this session (across connections, resends not counted)."""
        self.server_acked = 0
        """Data frames the server confirmed receiving."""
        self.rtt: float | None = None
        """Round trip of the last ping this client sent, in seconds."""
        self.server_interval: float | None = None
        """The server's heartbeat interval from ``hello``: it pings after that much silence."""
        self.invalid_control_frames = 0
        """Control frames from the server that were not valid protocol: counted and ignored."""

        self._unacked: deque[Frame] = deque()
        self._pending: deque[Frame] = deque()
        self._open = False
        self._awaiting_hello = False
        self._resume_asked = False
        self._paused = False
        self._reported = 0  # inbound count last told to the server
        self._ack_due: float | None = None
        self._last_inbound = 0.0
        self._last_outbound = 0.0
        self._ping_sent_at: float | None = None
        self._solicited_at: float | None = None
        self._hint_at: float | None = None
        self._hint_reason = ""
        self._out: list[Frame] = []
        self._events: list[Event] = []

    # -- what the driver pulls out

    def data_to_send(self) -> list[Frame]:
        """Frames to transmit now, in order; the list is handed over and reset."""
        out, self._out = self._out, []
        return out

    def events_received(self) -> list[Event]:
        """Events since the last call, in order; the list is handed over and reset."""
        events, self._events = self._events, []
        return events

    @property
    def is_open(self) -> bool:
        """Whether a connection is live and its ``hello`` was received."""
        return self._open

    @property
    def buffered(self) -> int:
        """Outbound frames held: transmitted but unacknowledged, plus pending."""
        return len(self._unacked) + len(self._pending)

    def can_send(self) -> bool:
        """Whether ``send`` has room (else the caller waits: backpressure)."""
        return self.buffered < self.max_pending

    # -- connection lifecycle

    def connect_url(self) -> str:
        """The URL for the next connection attempt: opt in, and resume if there is a session."""
        return build_url(self.url, token=self.token, ack=self.received)

    def connection_made(self, now: float) -> None:
        """A transport connection is up; until its ``hello`` nothing is transmitted."""
        self._open = False
        self._awaiting_hello = True
        self._resume_asked = bool(self.token)
        self._paused = False
        self._last_inbound = self._last_outbound = now
        self._ping_sent_at = self._solicited_at = self._ack_due = None
        self._out.clear()  # leftovers of the previous connection (control frames) are stale

    def connection_lost(self, code: int, reason: str, now: float) -> CloseDecision:
        """The transport connection ended with ``code``; decide whether to resume."""
        self._open = False
        self._awaiting_hello = False
        self._ping_sent_at = self._solicited_at = self._ack_due = None
        hinted = self._hint_at
        self._hint_at = None
        if hinted is not None and (code in _NORMAL_CODES or should_reconnect(code)):
            return CloseDecision(True, code, reason or self._hint_reason, max(0.0, hinted - now))
        return CloseDecision(should_reconnect(code), code, reason)

    # -- outbound

    def send(self, frame: Frame, now: float) -> None:
        """Queue an already encoded data frame; transmitted at once when open, else pending.

        Raises ``OverflowError`` when there is no room (check `can_send` first).
        """
        if not self.can_send():
            raise OverflowError("send buffer full; wait until can_send()")
        if not self._open:
            self._pending.append(frame)
            return
        self._transmit(frame)
        self._last_outbound = now
        if len(self._unacked) >= max(1, self.max_pending // 2):
            # Half full: ask the server for its count now, so a sender that never pauses (and
            # so never lets the server's periodic ping come) is not stalled at the bound.
            self.request_ack(now)

    def request_ack(self, now: float) -> None:
        """Ping now so the pong's ``n`` trims the send buffer; at most one such ping is out at
        a time (another is allowed after ``ping_timeout`` if its pong never came)."""
        if not self._open or self._ping_sent_at is not None:
            return
        if self._solicited_at is not None and now - self._solicited_at < self.ping_timeout:
            return
        self._solicited_at = now
        self._ping(now)

    def _transmit(self, frame: Frame) -> None:
        self.sent += 1
        self._unacked.append(frame)
        self._out.append(frame)

    def _ping(self, now: float) -> None:
        self._ping_sent_at = now
        self._control("ping", ts=now, n=self.received)

    def _control(self, kind: str, **fields: Any) -> None:
        if "n" in fields:
            self._reported = fields["n"]
            self._ack_due = None
        self._out.append(encode_control(kind, **fields))

    def _trim(self, n: object) -> None:
        count = as_count(n)
        if count is None:
            return
        count = min(count, self.sent)  # acks beyond what was sent are ignored
        while self.server_acked < count:
            self._unacked.popleft()
            self.server_acked += 1

    # -- inbound

    def receive(self, frame: Frame, now: float) -> None:
        """Handle one inbound frame received at ``now``."""
        self._last_inbound = now
        self._ping_sent_at = None  # any inbound frame proves the server alive
        item = decode_frame(frame)
        if item is None:
            self.invalid_control_frames += 1  # never app data, never fatal
            return
        if isinstance(item, dict):
            self._handle_control(item, now)
            return
        if not self._open:
            self._fail(1002, "data frame before hello")
            return
        self.received += 1
        self._events.append(Message(item))
        if self.received - self._reported >= ACK_EVERY:
            self._control("ack", n=self.received)
        elif self._ack_due is None:
            self._ack_due = now + ACK_DELAY

    def _handle_control(self, msg: dict[str, Any], now: float) -> None:
        kind = msg["t"]
        if kind == "hello":
            self._hello(msg, now)
        elif not self._open:
            return
        elif kind == "ping":
            self._trim(msg.get("n"))
            self._control("pong", ts=msg["ts"], n=self.received)  # validated: a finite number
        elif kind == "pong":
            self._trim(msg.get("n"))
            self._solicited_at = None
            ts = msg.get("ts")
            if _is_number(ts) and ts <= now:
                self.rtt = now - ts
        elif kind == "ack":
            self._trim(msg.get("n"))
        elif kind == "reconnect":
            after_ms = msg.get("after_ms")
            delay = max(0.0, after_ms / 1000) if _is_number(after_ms) else 0.0
            self._hint_at = now + delay
            reason = msg.get("reason")
            self._hint_reason = reason if isinstance(reason, str) else "reconnect"

    def _hello(self, msg: dict[str, Any], now: float) -> None:
        session, token, ack = msg.get("session"), msg.get("token"), as_count(msg.get("ack"))
        if not self._awaiting_hello:
            self._fail(1002, "unexpected hello")
            return
        if msg.get("v") != 1 or not isinstance(session, str) or not isinstance(token, str):
            self._fail(1002, "unsupported hello")
            return
        self._awaiting_hello = False
        interval = msg.get("interval")
        self.server_interval = interval if _is_number(interval) and interval > 0 else None
        resumed = self._resume_asked and msg.get("resumed") is True
        old_session = self.session_id
        self.session_id, self.token = session, token
        if resumed:
            # The server holds frames 1..ack; resend the rest, which it has never seen.
            self._trim(ack if ack is not None else self.server_acked)
            resend = list(self._unacked)
            self._reported = self.received  # the server read our count from the URL
        else:
            if old_session is not None:
                reason = msg.get("reason")
                self._events.append(
                    ResyncEvent(
                        reason=reason if isinstance(reason, str) and reason else "unknown",
                        old_session_id=old_session,
                        new_session_id=session,
                        unacked=tuple(_unescape(f) for f in self._unacked),
                    )
                )
            self._unacked.clear()
            self.sent = self.server_acked = self.received = self._reported = 0
            resend = []
        self._open = True
        self._out.extend(resend)
        if resumed and not resend and not self._pending:
            # Any frame proves to the server that this hello arrived; until one does, the token
            # this connection resumed with stays valid (for the retry after a lost hello).
            self._control("ack", n=self.received)
        while self._pending:
            self._transmit(self._pending.popleft())
        self._last_inbound = self._last_outbound = now
        self._events.append(Opened(session, resumed))

    def _fail(self, code: int, reason: str) -> None:
        self._open = False
        self._awaiting_hello = False
        self._events.append(Failure(code, reason))

    # -- flow control

    def pause_reading(self, now: float) -> None:
        """The driver stops reading because the app is not consuming messages.

        The server's silence is then of our own making, so it is not taken as death; instead
        the client keeps the server from declaring *it* dead by sending an ``ack`` at least
        every `keepalive_period` (the server pings after that much inbound silence, and the
        pings go unread now).
        """
        self._paused = True
        self._ping_sent_at = None
        self._last_outbound = now

    def resume_reading(self, now: float) -> None:
        """The driver reads again: the silence clock restarts."""
        self._paused = False
        self._last_inbound = now

    @property
    def keepalive_period(self) -> float:
        """How often a paused client tells the server it is alive."""
        interval = self.server_interval
        return self.ping_interval if interval is None else min(self.ping_interval, interval / 2)

    # -- timers

    def next_deadline(self) -> float | None:
        """When ``tick`` next has something to do (monotonic seconds), or ``None``."""
        if not self._open:
            return None
        if self._paused:
            heartbeat = self._last_outbound + self.keepalive_period
        elif self._ping_sent_at is not None:
            heartbeat = self._ping_sent_at + self.ping_timeout
        else:
            heartbeat = self._last_inbound + self.ping_interval
        return heartbeat if self._ack_due is None else min(heartbeat, self._ack_due)

    def tick(self, now: float) -> None:
        """Run what is due at ``now``: a delayed ack, a ping to a silent server, declare the
        server dead when a ping went unanswered for ``ping_timeout``, or (paused) a keepalive."""
        if not self._open:
            return
        if self._paused:
            due = self._ack_due is not None and now >= self._ack_due
            if due or now >= self._last_outbound + self.keepalive_period:
                self._last_outbound = now
                self._control("ack", n=self.received)
            return
        if self._ping_sent_at is not None and now >= self._ping_sent_at + self.ping_timeout:
            self._fail(1011, "ping timeout")
            return
        if self._ping_sent_at is None and now >= self._last_inbound + self.ping_interval:
            self._ping(now)  # carries n, so it doubles as the ack
        if self._ack_due is not None and now >= self._ack_due:
            self._control("ack", n=self.received)
