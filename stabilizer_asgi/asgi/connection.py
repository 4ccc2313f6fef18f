"""The per-connection driver: wraps one websocket's `receive`/`send`.

No task exists per connection in the common case. An app that awaits `receive()` reads the
socket itself; the single housekeeping loop of the manager checks liveness from the timestamps
that reading leaves behind. Only when a ping is due while the app is not reading does the
connection get a reader task (bounded read-ahead), so push-only endpoints still see pongs.
Manager sends never wait: they are stepped inline and queued (bounded) only while the transport
is busy, with a writer task only for as long as the backlog lasts.

A close must be written within `close_timeout`, in turn after the send in flight: when the peer
stops reading, neither can be, so past the bound the transport is aborted and every send of ours
is cancelled. The middleware holds the connection's slot until then (`settle`).
"""

from __future__ import annotations

import asyncio
import json
import time
import types
from collections import deque
from collections.abc import Callable, Coroutine, Generator, Iterator
from typing import Any

import anyio
from starlette.websockets import WebSocketDisconnect

from ..core import wire
from ..core.heartbeat import Action, heartbeat_step
from ..core.limits import TokenBucket
from ..core.session import Session, SessionState
from ..types import Message, Receive, Send
from . import _runtime
from .host import ConnectionHost

CONNECTING, OPEN, CLOSED, RESPONSE = 0, 1, 2, 3
DELIVERED, DROPPED, FAILED = 0, 1, 2

_RS = wire.RS
_monotonic = time.monotonic
_current_task = _runtime.current_task
_text_size = wire.text_size


# The transport's rules. A `Connection` is the one owner of its server `send`; everything that
# writes (the app's sends, manager sends and broadcasts, control frames, the close) goes
# through the methods below, and these fields are set only here (plus `FanOut.hand_off`, which
# hands a suspended inline send to this connection's writer):
# - `_busy`: one writer holds the transport (an app send, an inline manager send that
#   suspended, `_flush`, or the accept, through the greeting and replay that the manager's
#   `accepted` writes with `greet`). Only the holder clears it
#   (`_end_turn`, `_flush`); while it is set every other frame waits in `_outq`, bounded by
#   max_queue_messages / max_queue_bytes (over it: `slow_consumer`), and goes out in order.
# - `_phase`: CONNECTING → OPEN (the app's accept) → CLOSED, or RESPONSE (a denial). Manager
#   frames are written only while OPEN.
# - `_closing`: set once, by `abort` (a close of ours) or `_transport_failed`; from then on
#   only the close frame is written, the app's sends raise `WebSocketDisconnect` and its
#   `receive` returns the disconnect. A close that cannot be written within `close_timeout`
#   aborts the transport.
# - `session._conn is self`: this connection owns its session (set by the manager when it
#   binds a resume or accepts, cleared when the session detaches, ends or is superseded);
#   frames for a session without one are held for its resume (`offer_one`).
# Delivery (`offer_one`, `deliver`, `fan_out`, at the end of this module) is the only code
# outside the class that steps a connection's send, and it does so under these rules.
# The seam with the manager, both ways public and nothing else: a connection calls only the
# `ConnectionHost` methods (`asgi/host.py`; this module never imports the manager), and the
# manager uses only the section "the manager's view" of the class (`abort`, `offer_control`,
# `greet`, `take_unread`, `bind_resume`/`refuse_resume`, the `heartbeat_slot` it owns, and
# read-only state) plus `session._conn`, which it alone sets. The greeting and replay go out
# through `greet`, in the accept's turn, so no write bypasses `_busy`.


class Connection:
    """One websocket connection of a `Session`, between the server and the app."""

    __slots__ = (
        "session",
        "_mgr",
        "_metrics",
        "_receive",
        "_send",
        "_loop",
        "_phase",
        "_closing",
        "_proto",
        "_hb",
        "_max_size",
        "_bucket",
        "_busy",
        "_outq",
        "_outq_bytes",
        "_recv_task",
        "_send_task",
        "_recv_interrupted",
        "_send_interrupted",
        "_recv_scope",
        "_send_scope",
        "_inbox",
        "_inbox_ready",
        "_inbox_space",
        "_reader_scope",
        "_writer_scope",
        "_hb_key",
        "_server_disconnect",
        "_resume_ack",
        "_resume_generation",
        "_resume_reason",
        "_resume_token",
        "_requested_ack",
        "_finished",
        "_reads",
        "_redirected",
        "_opened",
        "_app_closed",
        "_send_failed",
        "_idle",
        "_forced",
        "__weakref__",
    )

    def __init__(
        self,
        manager: ConnectionHost,
        session: Session,
        receive: Receive,
        send: Send,
        *,
        control: bool,
        heartbeat: bool,
    ) -> None:
        cfg = manager.config
        self.session = session
        self._mgr = manager
        self._metrics = manager.metrics  # the process totals, bumped per frame
        self._receive = receive
        self._send = _runtime.coroutine_send(send)
        # The running asyncio loop, None on trio. `current_task()` without it calls
        # `get_running_loop()`, which on CPython <= 3.11 makes a getpid() syscall per frame.
        self._loop = asyncio.get_running_loop() if _runtime.library() == "asyncio" else None
        self._phase = CONNECTING
        self._closing: tuple[int, str] | None = None
        # "control": wire protocol v1 (opted in); "text": plain ping/pong text; None: transparent
        self._proto = "control" if control else ("text" if heartbeat else None)
        self._hb = heartbeat
        self._max_size = cfg.max_message_size
        rl = cfg.rate_limit
        self._bucket = TokenBucket(rl[0], rl[1], _monotonic()) if rl is not None else None
        self._busy = False
        self._outq: deque[tuple[Message, int, anyio.Event | None]] | None = None
        self._outq_bytes = 0
        self._recv_task: asyncio.Task[Any] | None = None
        self._send_task: asyncio.Task[Any] | None = None
        self._recv_interrupted = False
        self._send_interrupted = False
        self._recv_scope: anyio.CancelScope | None = None
        self._send_scope: anyio.CancelScope | None = None
        self._inbox: deque[Message] | None = None
        self._inbox_ready: anyio.Event | None = None
        self._inbox_space: anyio.Event | None = None
        self._reader_scope: anyio.CancelScope | None = None
        self._writer_scope: anyio.CancelScope | None = None
        # Its handle in the heartbeat wheel (None: not in the wheel). Only the manager
        # schedules it; `finish` takes it out, so a closed connection is not kept alive by
        # the wheel until its slot comes due.
        self._hb_key: int | None = None
        self._server_disconnect: Message | None = None
        # Set when this connection resumes a detached session: the client's `stabilizer_ack`.
        self._resume_ack: int | None = None
        self._resume_generation = 0  # the generation of the token it resumed with
        self._resume_reason: str | None = None
        # The token a resume that could not be honoured here presented (cluster mode asks the
        # other nodes whether it was used).
        self._resume_token: str | None = None
        self._requested_ack: int | None = None
        self._finished = False
        # The app has called `receive` (it learns of a close there); frames it sent after the
        # middleware's close that went to the session (`_redirect`).
        self._reads = False
        self._redirected = 0
        self._opened = False
        self._app_closed = False
        self._send_failed = False
        # Set (and dropped) when our sends stop keeping the transport busy: `settle` waits on it.
        self._idle: anyio.Event | None = None
        # The transport was aborted because a close could not be written within close_timeout.
        self._forced = False

    # ------------------------------------------------------------------ receive side

    async def receive(self) -> Message:
        """The app's `receive`: control frames and limits handled, data passed through."""
        if self._phase == OPEN:
            self._reads = True  # (not for the `websocket.connect` an accept reads)
        if self.session._carry and self._phase == OPEN and self._closing is None:
            return self._take_carried()
        if self._inbox is not None:
            return await self._receive_buffered()
        while True:
            if self._closing is not None and self._phase != CONNECTING:
                return self._closed_message()
            if self._loop is not None:
                task = _current_task(self._loop)
                self._recv_task = task
                try:
                    message = await self._receive()
                except asyncio.CancelledError:
                    if self._recv_interrupted and task is not None:
                        self._recv_interrupted = False
                        if not _runtime.uncancel(task):
                            return self._closed_message()
                    raise
                finally:
                    self._recv_task = None
            else:
                try:
                    with anyio.CancelScope() as scope:
                        self._recv_scope = scope
                        message = await self._receive()
                finally:  # also when the app's own timeout cancels it: it is no longer reading
                    self._recv_scope = None
                if scope.cancelled_caught:
                    return self._closed_message()
            out = self._inbound(message)
            if out is not None:
                if out.get("type") == "websocket.receive":
                    self._took(out)
                return out
            if self._inbox is not None:  # pragma: no cover - a reader cannot start mid-receive
                return await self._receive_buffered()

    def _took(self, message: Message) -> None:
        """The app took a data frame: it now counts as received (and is acknowledged)."""
        session = self.session
        session.frames_in += 1
        if session._replay is not None:
            session._unacked_in += 1
            text = message.get("text")
            data = text if text is not None else message.get("bytes")
            session._unacked_in_bytes += len(data) if data is not None else 0
            cfg = self._mgr.config
            if (
                session._unacked_in * 4 >= cfg.replay_buffer_messages
                or session._unacked_in_bytes * 4 >= cfg.replay_buffer_bytes
            ):
                # Let the client trim its replay buffer well before it can overflow.
                self.send_ack()
            elif session._unacked_in == 1:
                # Otherwise acknowledge within a housekeeping tick, so what the client reports
                # as unconfirmed after a resync is only what the app may really not have taken.
                self._mgr.ack_soon(self)

    def send_ack(self) -> None:
        """Tell the client how many of its data frames the app has taken (if any are new)."""
        session = self.session
        if session._unacked_in and session._conn is self:
            session._unacked_in = session._unacked_in_bytes = 0
            self.offer_control(wire.encode_control("ack", n=session.frames_in))

    def _take_carried(self) -> Message:
        """A frame read off the session's previous connection that its app never took."""
        carry = self.session._carry
        assert carry is not None
        message = carry.popleft()
        if not carry:
            self.session._carry = None
        self._took(message)
        return message

    def _inbound(self, message: Message) -> Message | None:
        """Handle one message from the server; return what the app should see, or None."""
        kind = message.get("type")
        if kind == "websocket.receive":
            now = _monotonic()
            session = self.session
            session._last_in = now
            if not session._token_confirmed and session._conn is self:
                # A frame on the resumed connection: the client read its hello and holds the
                # new token, so the previous one is spent for good.
                session._token_confirmed = True
            text = message.get("text")
            if text is not None:
                size = _text_size(text)
            else:
                data = message.get("bytes")
                size = len(data) if data is not None else 0
            if self._max_size is not None and size > self._max_size and not self._exempt(text):
                self.abort(1009, "message too big")
                return self._closed_message()
            bucket = self._bucket
            if bucket is not None and not bucket.take(now):
                self.abort(1008, "rate limit exceeded")
                return self._closed_message()
            if text is not None:
                proto = self._proto
                if proto == "control" and text[:1] == _RS:
                    if text[1:2] != _RS:
                        self._control(text, now)
                        return None
                    message = {"type": kind, "text": text[1:]}
                    size -= 1
                elif proto == "text" and text == self._mgr.config.pong_text:
                    if session._ping_at is not None:
                        session.rtt = now - session._ping_at
                    return None
            session.bytes_in += size
            totals = self._metrics
            totals.frames_in += 1
            totals.bytes_in += size
            return message
        if kind == "websocket.disconnect":
            self._server_disconnect = message
            if self._phase == OPEN:
                self._phase = CLOSED
            if self._closing is not None:
                return self._closed_message()
        return message

    def _exempt(self, text: str | None) -> bool:
        """A frame over `max_message_size` that is still allowed: a control frame (the limit
        is for data; control frames have their own bound, see `wire.decode_control`), or app
        text of exactly the limit that the client escaped with one more RS."""
        if text is None or self._proto != "control" or text[:1] != _RS:
            return False
        if text[1:2] != _RS:
            return True
        assert self._max_size is not None
        return _text_size(text) - 1 <= self._max_size

    def _control(self, text: str, now: float) -> None:
        """A control frame from the client. One that is not valid protocol (see
        `wire.decode_control`) is counted and ignored: never raised, never a close."""
        pong = wire.decode_pong(text)
        if pong is not None:  # the heartbeat's answer, once per interval: skip the JSON parser
            self.session._ack_out(pong[1])
            self._pong(pong[0], now)
            return
        frame = wire.decode_control(text, wire.FROM_CLIENT)
        if frame is None:
            self._mgr.count_event("invalid_control_frames")
            return
        session = self.session
        n = frame.get("n")
        if n is not None:
            session._ack_out(n)
        kind = frame["t"]
        if kind == "pong":
            self._pong(frame["ts"], now)
        elif kind == "ping":
            self.offer_control(wire.encode_control("pong", ts=frame["ts"], n=session.frames_in))

    def _pong(self, ts: object, now: float) -> None:
        """The answer to our ping: its round-trip time, if it echoes the latest ping's `ts`."""
        session = self.session
        if session._ping_ts is not None and ts == session._ping_ts:
            session.rtt = now - session._ping_ts / 1e6
            self._mgr.record_rtt(session.rtt)

    async def _receive_buffered(self) -> Message:
        """Receive while a reader task owns the socket: take from the bounded read-ahead."""
        inbox = self._inbox
        assert inbox is not None
        while True:
            if self._closing is not None:
                return self._closed_message()
            if inbox:
                message = inbox.popleft()
                space = self._inbox_space
                if space is not None:
                    self._inbox_space = None
                    space.set()
                if message.get("type") == "websocket.receive":
                    self._took(message)
                return message
            ready = self._inbox_ready = anyio.Event()
            await ready.wait()

    def _start_reader(self) -> None:
        if self._inbox is None and self._phase == OPEN:
            self._inbox = deque()
            self._mgr.spawn(self._reader)

    async def _reader(self) -> None:
        inbox = self._inbox
        assert inbox is not None
        limit = self._mgr.config.max_read_ahead
        with anyio.CancelScope() as scope:
            self._reader_scope = scope
            try:
                while self._closing is None:
                    while len(inbox) >= limit:
                        space = self._inbox_space = anyio.Event()
                        await space.wait()
                    message = await self._receive()
                    out = self._inbound(message)
                    if out is not None:
                        inbox.append(out)
                        ready = self._inbox_ready
                        if ready is not None:
                            self._inbox_ready = None
                            ready.set()
                    if message.get("type") == "websocket.disconnect":
                        break
            except Exception as exc:  # the server's receive failed: the app must unwind
                self._mgr.log_error("reader failed", self.session, exc)
                inbox.append({"type": "websocket.disconnect", "code": 1006, "reason": ""})
                ready = self._inbox_ready
                if ready is not None:
                    ready.set()
        self._reader_scope = None

    # ------------------------------------------------------------------ send side

    async def send(self, message: Message) -> None:
        """The app's `send`: ordered with manager sends, escaped for opted-in clients."""
        phase = self._phase
        kind = message.get("type")
        held = False
        if phase == OPEN and kind == "websocket.send":
            if self._closing is not None:
                if self._reads and self._redirect(message):
                    return
                raise WebSocketDisconnect(*self._closing)
            text = message.get("text")
            if text is not None:
                size = _text_size(text)
                if text[:1] == _RS and self._proto == "control":
                    message = {"type": kind, "text": _RS + text}
            else:
                data = message.get("bytes")
                size = len(data) if data is not None else 0
            session = self.session
            session.frames_out += 1
            session.bytes_out += size
            totals = self._metrics
            totals.frames_out += 1
            totals.bytes_out += size
            held = session._replay is not None and session._buffer_out(message, size)
        elif phase == OPEN and kind == "websocket.close":
            if self._closing is not None:
                return  # the middleware closed it already; closing twice is harmless
            self._phase = CLOSED
            self._app_closed = True
            session = self.session
            session.close_code = message.get("code", 1000)
            session.close_reason = message.get("reason") or ""
            await self._send_close(message)
            return
        else:
            await self._send_outside_open(phase, kind, message)
            return
        # In turn with manager sends. The asyncio path is inline: one coroutine less per frame.
        try:
            if self._busy:
                await self._send_queued(message)
            elif self._loop is None:
                await self._send_scoped(message)
            else:
                self._busy = True
                task = self._send_task = _current_task(self._loop)
                try:
                    await self._send(message)
                except Exception:
                    self._send_failed = True
                    raise
                except asyncio.CancelledError:
                    if self._send_interrupted and task is not None:
                        self._send_interrupted = False
                        if not _runtime.uncancel(task):
                            raise WebSocketDisconnect(*(self._closing or (1006, ""))) from None
                    raise
                finally:
                    self._send_task = None
                    self._end_turn()
        except (WebSocketDisconnect, OSError):
            if not held:
                raise
            # Held for replay: it counts as sent even if this connection fails now,
            # so an app that retries on the error cannot cause a duplicate.
            self._send_failed = True

    def _redirect(self, message: Message) -> bool:
        """A frame the app sends after the middleware closed this connection (a drain, a
        resume elsewhere) and before its `receive` told it so (typically the reply to the
        last frame it took): it goes to the session, as a manager send would (kept for
        replay while detached, or sent on the connection that resumed it). At most
        `replay_buffer_messages` of them; an app that never calls `receive` (push-only)
        learns of the close from `send` at once. False if the session cannot take it."""
        session = self.session
        if (
            self._proto != "control"
            or session._replay is None
            or self._redirected >= self._mgr.config.replay_buffer_messages
        ):
            return False
        self._redirected += 1
        text = message.get("text")
        if text is not None:
            frame: Message = {"type": "websocket.send", "text": text}
            size = _text_size(text)
        else:
            data = message.get("bytes")
            if data is None:
                return False
            frame = {"type": "websocket.send", "bytes": data}
            size = len(data)
        return offer_one(session, frame, escaped(frame), size, _monotonic()) == DELIVERED

    async def _send_outside_open(self, phase: int, kind: object, message: Message) -> None:
        """The app's `send` before the handshake completes, or after the connection closed."""
        if phase == CONNECTING:
            if kind == "websocket.accept":
                await self._send(message)
                self._phase = OPEN
                self._opened = True
                # Nothing else may reach the socket before the greeting (and any replay).
                self._busy = True
                try:
                    await self._mgr.accepted(self)
                finally:
                    self._end_turn()
                return
            if kind == "websocket.close":
                await self._send(message)
                self._phase = CLOSED
                return
            if kind == "websocket.http.response.start":
                await self._send(message)
                self._phase = RESPONSE
                return
        elif self._closing is not None and kind in ("websocket.send", "websocket.close"):
            if kind == "websocket.send":
                raise WebSocketDisconnect(*self._closing)
            return
        await self._send(message)

    async def _send_close(self, message: Message) -> None:
        """The app's close, in turn with manager sends, written within `close_timeout`; past
        it the transport is aborted, and the close returns (the connection is closed)."""
        with anyio.move_on_after(self._mgr.config.close_timeout):
            if self._busy:
                await self._send_queued(message)
                return
            self._busy = True
            try:
                await self._send(message)
            except Exception:
                self._send_failed = True
                raise
            finally:
                self._end_turn()
            return
        self._force_close()

    async def _send_queued(self, message: Message) -> None:
        """The transport is busy: wait for this frame's turn in the outbound queue."""
        waiter = anyio.Event()
        queue = self._outq
        if queue is None:
            queue = self._outq = deque()
        queue.append((message, 0, waiter))
        await waiter.wait()
        if self._closing is not None and message.get("type") == "websocket.send":
            raise WebSocketDisconnect(*self._closing)

    async def _send_scoped(self, message: Message) -> None:
        """Send one app frame on trio, in a cancel scope `abort` can cancel."""
        self._busy = True
        try:
            with anyio.CancelScope() as scope:
                self._send_scope = scope
                try:
                    await self._send(message)
                except Exception:
                    self._send_failed = True
                    raise
            self._send_scope = None
            if scope.cancelled_caught:
                raise WebSocketDisconnect(*(self._closing or (1006, "")))
        finally:
            self._end_turn()

    def _end_turn(self) -> None:
        """An app send finished: hand the transport to the backlog, if any."""
        if self._outq:
            self._mgr.spawn(self._flush)
        else:
            self._set_idle()

    def _set_idle(self) -> None:
        """Nothing of ours is being written any more: wake whoever waits for that."""
        self._busy = False
        idle = self._idle
        if idle is not None:
            self._idle = None
            idle.set()

    def offer(self, frame: Message, escaped: Message, size: int, now: float) -> int:
        """Hand a data frame to this connection without waiting (manager sends, broadcast)."""
        session = self.session
        if self._phase != OPEN or self._closing is not None:
            if session._replay is not None and session._conn is self:
                # A resume being accepted (replayed right after the greeting), or a connection
                # that is going down (replayed if the session resumes, dropped if it ends).
                return DELIVERED if session._hold(escaped, size) else FAILED
            return FAILED
        out, held = self._outbound(frame, escaped, size, now)
        result = self._offer(out, size)
        # A frame held for replay is delivered even if this connection fails under it.
        return DELIVERED if held and result == FAILED else result

    def _outbound(
        self, frame: Message, escaped: Message, size: int, now: float
    ) -> tuple[Message, bool]:
        """Count a manager frame as sent on this open connection: the form this client gets,
        and whether it is held for replay."""
        session = self.session
        session.frames_out += 1
        session.bytes_out += size
        session._last_out = now
        if self._proto != "control":
            return frame, False
        return escaped, session._replay is not None and session._buffer_out(escaped, size)

    def offer_control(self, text: str) -> int:
        if self._phase != OPEN or self._closing is not None:
            return FAILED
        return self._offer({"type": "websocket.send", "text": text}, len(text))

    def _offer(self, frame: Message, size: int) -> int:
        """Write now if the transport is idle (stepping the server's send inline: it completes
        without suspending unless the transport pushes back), else queue (bounded)."""
        if self._busy:
            return self._enqueue(frame, size)
        self._busy = True
        if self._loop is None:
            self._mgr.spawn(self._write, frame)
            return DELIVERED
        coro = self._send(frame)
        try:
            first = coro.send(None)
        except StopIteration:
            self._busy = False
            return DELIVERED
        except Exception as exc:
            self._busy = False
            self._transport_failed(exc)
            return FAILED
        self._mgr.spawn(self._write_rest, coro, first)
        return DELIVERED

    def _enqueue(self, frame: Message, size: int) -> int:
        queue = self._outq
        if queue is None:
            queue = self._outq = deque()
        cfg = self._mgr.config
        if len(queue) >= cfg.max_queue_messages or self._outq_bytes + size > cfg.max_queue_bytes:
            return self._slow_consumer()
        session = self.session
        try:
            session._charge(size)
        except Exception:
            return self._slow_consumer()
        queue.append((frame, size, None))
        self._outq_bytes += size
        return DELIVERED

    def _slow_consumer(self) -> int:
        self.session.dropped += 1
        self._mgr.count_event("slow_consumer_drops")
        if self._mgr.config.slow_consumer == "close":
            self._mgr.slow_consumer(self)
            self.abort(1008, "slow consumer")
            return FAILED
        return DROPPED

    async def _write(self, frame: Message) -> None:
        with anyio.CancelScope() as scope:
            self._writer_scope = scope
            try:
                await self._send(frame)
            except Exception as exc:
                self._transport_failed(exc)
        await self._flush()

    async def _write_rest(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        with anyio.CancelScope() as scope:
            self._writer_scope = scope
            try:
                await _runtime.Continue(coro, first)
            except Exception as exc:
                self._transport_failed(exc)
        if scope.cancel_called:
            coro.close()
        await self._flush()

    async def _flush(self) -> None:
        """Drain the outbound backlog in order; runs in a service task while the backlog lasts."""
        queue = self._outq
        try:
            with anyio.CancelScope() as scope:
                self._writer_scope = scope
                while queue:
                    frame, waiter = self._dequeue(queue)
                    failed = self._closing is not None and frame.get("type") != "websocket.close"
                    if not failed:
                        try:
                            await self._send(frame)
                        except Exception as exc:
                            self._transport_failed(exc)
                    if waiter is not None:
                        waiter.set()
        finally:
            self._writer_scope = None
            self._release_queue()
            self._set_idle()

    def _dequeue(
        self, queue: deque[tuple[Message, int, anyio.Event | None]]
    ) -> tuple[Message, anyio.Event | None]:
        """Take the oldest queued frame and release its memory accounting."""
        frame, size, waiter = queue.popleft()
        if size:
            self._outq_bytes -= size
            self.session._charge(-size)
        return frame, waiter

    def _release_queue(self) -> None:
        queue = self._outq
        while queue:
            _frame, waiter = self._dequeue(queue)
            if waiter is not None:
                waiter.set()

    def _transport_failed(self, exc: BaseException) -> None:
        """The server's `send` raised (the client is gone): stop writing to this connection."""
        if self._closing is None:
            self._closing = (1006, "")
            self._mgr.count_event("send_failures")
        for entry in self._outq or ():
            if entry[2] is not None:
                entry[2].set()

    # ------------------------------------------------------------------ closing

    def _closed_message(self) -> Message:
        code, reason = self._closing or (1006, "")
        return {"type": "websocket.disconnect", "code": code, "reason": reason}

    def abort(self, code: int, reason: str) -> bool:
        """Close from the middleware: the app's receive returns `websocket.disconnect` with
        `code`, its sends raise `WebSocketDisconnect(code)`, and the client gets the close."""
        if self._closing is not None or self._phase not in (OPEN, CONNECTING):
            return False
        self._closing = (code, reason)
        was_open = self._phase == OPEN
        session = self.session
        session.close_code = code
        session.close_reason = reason
        self._mgr.aborted(self, code, reason)
        ready = self._inbox_ready
        if ready is not None:
            self._inbox_ready = None
            ready.set()
        for scope in (self._reader_scope, self._recv_scope, self._send_scope):
            if scope is not None:
                scope.cancel()
        if self._recv_task is not None:
            self._recv_interrupted = True
            self._recv_task.cancel()
        if self._send_task is not None:
            self._send_interrupted = True
            self._send_task.cancel()
        if was_open:
            close = {"type": "websocket.close", "code": code, "reason": reason}
            if self._busy:
                self._release_queue()
                queue = self._outq
                if queue is None:  # busy with one in-flight send and no backlog yet
                    queue = self._outq = deque()
                queue.append((close, 0, None))
            else:
                self._offer(close, 0)
            if self._busy:  # the close waits for the transport: it gets close_timeout
                self._mgr.spawn(self._close_watch)
        return True

    async def _close_watch(self) -> None:
        """Abort the transport if the middleware's close is not written within the bound."""
        with anyio.move_on_after(self._mgr.config.close_timeout):
            await self._wait_idle()
            return
        self._force_close()

    async def _wait_idle(self) -> None:
        """Until nothing of ours is being written to the transport (the close included)."""
        while self._busy:
            idle = self._idle
            if idle is None:
                idle = self._idle = anyio.Event()
            await idle.wait()

    async def settle(self) -> None:
        """The app returned: hold on until the transport is done with this connection, at most
        `close_timeout`, then abort it. The middleware releases the slot after this."""
        if self._forced or (not self._busy and not _buffered(self._send)):
            return
        try:
            with anyio.move_on_after(self._mgr.config.close_timeout):
                await self._wait_idle()
                # The close is written; the server closes the transport once its buffer is
                # flushed, which never happens if the peer stopped reading.
                while _buffered(self._send):  # noqa: ASYNC110 - the transport has no event
                    await anyio.sleep(_FLUSH_POLL)
                return
        finally:
            if self._busy or _buffered(self._send):
                self._force_close()

    def _force_close(self) -> None:
        """A close could not be written within `close_timeout`: abort the transport (if the
        server lets us reach it) and cancel every send of ours still waiting on it."""
        if self._forced:
            return
        self._forced = True
        if self._closing is None:
            self._closing = (1006, "")
        self._mgr.count_event("transport_aborts")
        transport = _runtime.transport_of(self._send)
        if transport is not None:
            try:
                _runtime.abort_transport(transport)
            except Exception as exc:  # pragma: no cover - defensive
                self._mgr.log_error("transport abort failed", self.session, exc)
        for scope in (self._writer_scope, self._send_scope):
            if scope is not None:
                scope.cancel()
        if self._send_task is not None:
            self._send_interrupted = True
            self._send_task.cancel()
        self._release_queue()

    # ------------------------------------------------------------------ heartbeat

    def heartbeat(self, now: float) -> float | None:
        """One housekeeping visit: ping, declare dead, or wait. Returns the next visit time."""
        if self._phase != OPEN or self._closing is not None:
            return None
        mgr = self._mgr
        cfg = mgr.config
        session = self.session
        action, ping_at, next_at = heartbeat_step(
            session._last_in, session._ping_at, now, cfg.heartbeat_interval, cfg.heartbeat_timeout
        )
        session._ping_at = ping_at
        if action is Action.PING:
            if self._inbox is None and self._recv_task is None and self._recv_scope is None:
                self._start_reader()
            mgr.count_event("pings")
            if self._proto == "control":
                # The ping's `ts`: this clock in whole microseconds (an int formats faster),
                # read now (`now` is the housekeeper's tick) so the RTT is the network's.
                session._ping_ts = ts = int(_monotonic() * 1e6)
                self.offer_control(wire.encode_ping(ts, session.frames_in))
            else:
                self.offer_control(cfg.ping_text)
        elif action is Action.DEAD:
            mgr.heartbeat_timeout(self)
            self.abort(1011, "heartbeat timeout")
            return None
        return next_at

    @property
    def finished(self) -> bool:
        """The app has returned (`finish` ran)."""
        return self._finished

    def finish(self) -> None:
        """The app returned: stop every background part of this connection."""
        self._finished = True
        key = self._hb_key
        if key is not None:
            self._hb_key = None
            self._mgr.unschedule(self, key)
        if self._phase == OPEN:
            self._phase = CLOSED
        for scope in (self._reader_scope,):
            if scope is not None:
                scope.cancel()
        if self._closing is None and not self._busy:
            self._release_queue()

    def close_code(self) -> int | None:
        """The close code this connection ended with, as its client saw it (None: no close
        frame, an abnormal drop)."""
        if self._closing is not None:
            code = self._closing[0]
            return None if code == 1006 else code
        if self._app_closed:
            return self.session.close_code
        disconnect = self._server_disconnect
        if disconnect is not None:
            code = disconnect.get("code", 1005)
            return code if isinstance(code, int) else 1005
        if self._send_failed:
            return None
        return 1000  # the app returned without closing: the server closes normally

    @property
    def state(self) -> SessionState:
        return self.session.state

    # ------------------------------------------------------------------ the manager's view
    # What the manager may read or set on a connection (it touches nothing else of it).

    @property
    def proto(self) -> str | None:
        """ "control" (opted in to wire protocol v1), "text" (plain ping/pong) or None."""
        return self._proto

    @property
    def has_heartbeat(self) -> bool:
        """Whether the housekeeper pings this connection."""
        return self._hb

    @property
    def connecting(self) -> bool:
        """The app has not accepted (nor denied) yet."""
        return self._phase == CONNECTING

    @property
    def heartbeat_slot(self) -> int | None:
        """Its handle in the manager's heartbeat wheel (None: not scheduled). Set only by
        the manager, which owns the wheel; `finish` takes it out."""
        return self._hb_key

    @heartbeat_slot.setter
    def heartbeat_slot(self, slot: int | None) -> None:
        self._hb_key = slot

    @property
    def opened(self) -> bool:
        """The app accepted this connection."""
        return self._opened

    @property
    def app_closed(self) -> bool:
        """The app closed this connection itself (the session ends, it is not resumable)."""
        return self._app_closed

    @property
    def send_failed(self) -> bool:
        """A write to the transport failed (the client is gone: close code 1006)."""
        return self._send_failed

    @property
    def server_disconnect(self) -> Message | None:
        """The server's `websocket.disconnect` message, once received."""
        return self._server_disconnect

    @property
    def resume_ack(self) -> int | None:
        """The client's `stabilizer_ack` when this connection resumes a session, else None."""
        return self._resume_ack

    @property
    def resume_generation(self) -> int:
        """The generation of the token this connection resumed with."""
        return self._resume_generation

    @property
    def resume_reason(self) -> str | None:
        """Why a requested resume was refused ("invalid", "gap", "unknown", ...), else None."""
        return self._resume_reason

    @property
    def resume_token(self) -> str | None:
        """The token of a resume this node could not place (kept for the cluster check)."""
        return self._resume_token

    @property
    def requested_ack(self) -> int | None:
        """The `stabilizer_ack` of a resume this node could not place (with `resume_token`)."""
        return self._requested_ack

    def bind_resume(
        self,
        reason: str | None,
        resume: tuple[int, int] | None,
        token: str | None = None,
        ack: int | None = None,
    ) -> None:
        """Record the outcome of the resume request: `resume` is (ack, generation) when this
        connection resumes its session, `reason` why not otherwise, `token` and `ack` what the
        client presented when no session here matched (the cluster may have it)."""
        self._resume_reason = reason
        if resume is not None:
            self._resume_ack, self._resume_generation = resume
        self._resume_token = token
        self._requested_ack = ack

    def rebind(self, session: Session) -> None:
        """Before the app runs: this connection belongs to `session` (one taken over from
        another node for its resume), not to the new session it was opened with."""
        assert self._phase == CONNECTING
        self.session = session

    def refuse_resume(self, reason: str) -> None:
        """Change why the resume was refused (the cluster found the token already used)."""
        self._resume_reason = reason

    def take_unread(self) -> list[Message]:
        """Empty the read-ahead buffer: the data frames the reader took in that the app never
        read (a detach carries them to the session's next connection)."""
        inbox = self._inbox
        if not inbox:
            return []
        unread = [m for m in inbox if m.get("type") == "websocket.receive"]
        inbox.clear()
        return unread

    async def greet(self, hello: str, replay: list[Message]) -> None:
        """Write the `hello` and the replayed frames in the accept's turn on the transport
        (`_send_outside_open` holds `_busy` around the manager's `accepted`). A failed write
        marks the transport failed; the app's next `receive` reports the disconnect."""
        send = self._send
        try:
            await send({"type": "websocket.send", "text": hello})
            for frame in replay:
                await send(frame)
        except Exception as exc:  # the client is already gone: its receive() says so next
            self._send_failed = True
            self._transport_failed(exc)


_FLUSH_POLL = 0.02


def _buffered(send: Any) -> bool:
    """Whether the transport under `send` (if reachable) still holds unwritten bytes."""
    transport = _runtime.transport_of(send)
    if transport is None:
        return False
    try:
        return bool(transport.get_write_buffer_size())
    except Exception:  # pragma: no cover - a transport without the method
        return False


class FanOut:
    """One broadcast's counts, the connection it is writing to, and which stretch is current
    (a new stretch begins each time a send that pushed back is handed to its writer)."""

    __slots__ = ("conn", "dropped", "failed", "stretch")

    def __init__(self) -> None:
        self.conn: Connection | None = None
        self.dropped = 0
        self.failed = 0
        self.stretch = 0

    def count(self, result: int) -> None:
        if result == DROPPED:
            self.dropped += 1
        elif result == FAILED:
            self.failed += 1

    def hand_off(self) -> Connection:
        """The current stretch is suspended in `conn`'s send: that send now belongs to the
        connection's writer (busy until it is done), and the next stretch carries on."""
        conn = self.conn
        assert conn is not None
        conn._busy = True
        self.stretch += 1
        return conn


@types.coroutine
def fan_out(
    targets: Iterator[Session],
    frame: Message,
    escaped: Message,
    size: int,
    now: float,
    tally: FanOut,
) -> Generator[Any, Any, None]:
    """Broadcast on asyncio: step every idle transport's send inline, one after another.

    `yield from` the server's send costs no `StopIteration` per session, unlike stepping a
    coroutine per connection. If a send suspends (the transport pushes back), this generator
    yields: the caller hands it to that connection's writer, where it returns as soon as that
    one send is done (a new stretch has begun), and carries on with the rest of `targets` in a
    new one. Counts go to `tally`; those of a send finished by the writer come too late to be
    part of the broadcast's result (a frame in flight counts as delivered).
    Sessions that are detached, busy or closing go through `offer_one`.
    """
    stretch = tally.stretch
    for session in targets:
        conn = session._conn
        if conn is None or conn._busy or conn._phase != OPEN or conn._closing is not None:
            tally.count(offer_one(session, frame, escaped, size, now))
            continue
        out, held = conn._outbound(frame, escaped, size, now)
        tally.conn = conn
        try:
            yield from conn._send(out)
        except Exception as exc:
            conn._transport_failed(exc)
            if not held:  # a frame held for replay is delivered even if this connection fails
                tally.failed += 1
        if tally.stretch != stretch:
            return


# ---------------------------------------------------------------------- delivery
# Every frame the manager sends goes out through here: one session (`offer_one`), or a
# broadcast's fan-out to this process's sessions (`deliver`). Frames from other nodes of a
# cluster arrive as payloads and take the same path.

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def encode_message(message: object) -> tuple[dict[str, Any], int]:
    """An ASGI `websocket.send` event for `message` and its size in bytes."""
    if isinstance(message, str):
        return {"type": "websocket.send", "text": message}, wire.text_size(message)
    if isinstance(message, bytes | bytearray | memoryview):
        data = bytes(message)
        return {"type": "websocket.send", "bytes": data}, len(data)
    if isinstance(message, dict | list):
        text = _dumps(message)
        return {"type": "websocket.send", "text": text}, wire.text_size(text)
    raise TypeError(f"cannot send {type(message).__name__}: use str, bytes, dict or list")


def escaped(frame: Message) -> Message:
    """The frame as an opted-in client gets it: app text starting with RS gets one more."""
    text = frame.get("text")
    if text is not None and text[:1] == _RS:
        return {"type": "websocket.send", "text": _RS + text}
    return frame


def payload_of(frame: Message) -> str | bytes:
    """What crosses to other nodes for a frame: its text, or its bytes."""
    text = frame.get("text")
    if text is not None:
        return str(text)
    return bytes(frame["bytes"])


def frame_of(payload: str | bytes) -> tuple[Message, int]:
    """The frame for what came from another node (`payload_of` read back), and its size."""
    if isinstance(payload, str):
        return {"type": "websocket.send", "text": payload}, _text_size(payload)
    return {"type": "websocket.send", "bytes": payload}, len(payload)


def offer_one(session: Session, frame: Message, escaped: Message, size: int, now: float) -> int:
    """One recipient through the general path: DELIVERED, DROPPED or FAILED. A session with no
    connection (detached) keeps the frame for its resume."""
    conn = session._conn
    if conn is None:
        held = (
            session._replay is not None
            and session.state is SessionState.DETACHED
            and session._hold(escaped, size)
        )
        return DELIVERED if held else FAILED
    result: int = conn.offer(frame, escaped, size, now)
    return result


def deliver(
    targets: list[Session],
    frame: Message,
    size: int,
    spawn: Callable[..., Any],
) -> tuple[int, int, int, int]:
    """Fan a frame out to `targets` without waiting: (total, delivered, dropped, failed).

    On asyncio every idle transport's send is stepped inline (`fan_out`); a send that pushes
    back is handed to its connection's writer (started with `spawn`) and the rest carry on. On
    trio each recipient goes through `offer_one`.
    """
    shown = escaped(frame)
    now = _monotonic()
    tally = FanOut()
    if _runtime.library() != "asyncio":
        for session in targets:
            tally.count(offer_one(session, frame, shown, size, now))
    else:
        remaining = iter(targets)
        while True:
            pump = fan_out(remaining, frame, shown, size, now, tally)
            try:
                first = pump.send(None)
            except StopIteration:
                break
            # A transport pushed back: its writer finishes this one send (a frame in flight
            # counts as delivered), and a new stretch carries on with the other sessions.
            conn = tally.hand_off()
            spawn(conn._write_rest, pump, first)
    total = len(targets)
    return total, total - tally.dropped - tally.failed, tally.dropped, tally.failed
