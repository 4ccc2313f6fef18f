"""The asyncio driver: runs `ClientProtocol` over successive `websockets` connections."""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeAlias

try:
    from websockets.asyncio.client import ClientConnection
    from websockets.asyncio.client import connect as ws_connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
    from websockets.protocol import State
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "stabilizer_asgi.client needs websockets: pip install 'stabilizer-asgi[client]'"
    ) from exc

from ..core.backoff import Backoff
from ..exceptions import ConfigError, StabilizerError
from ._protocol import (
    ClientProtocol,
    Failure,
    Frame,
    Message,
    Opened,
    ResyncEvent,
    encode_data,
    is_retryable_status,
    parse_retry_after,
)

logger = logging.getLogger("stabilizer_asgi.client")

LOG_RECONNECTING = "connection lost (%s %s); reconnecting in %.2fs"
LOG_RETRY = "connect attempt %d failed (%s); retrying in %.2fs"
LOG_CALLBACK_FAILED = "%s callback raised"

_NORMAL_END = frozenset({1000, 1001, 1005})


class ClientState(str, enum.Enum):
    """Where a client connection stands, as the caller sees it."""

    CONNECTING = "connecting"
    """Before the first ``hello``."""
    OPEN = "open"
    """Connected; messages flow."""
    RECONNECTING = "reconnecting"
    """The connection dropped; resuming. ``send`` buffers, ``recv`` waits."""
    CLOSED = "closed"
    """For good: ``send`` and (once buffered messages are read) ``recv`` raise."""

    def __str__(self) -> str:
        return self.value


class ClientClosedError(StabilizerError):
    """The connection ended for good; ``code`` and ``reason`` say why.

    1000/1001 are normal ends (``close()``, or the server ending the session); 1006 with a
    ``reason`` means the client gave up connecting or was refused at the handshake.
    """

    def __init__(self, code: int, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"connection closed with {code}" + (f": {reason}" if reason else ""))


Outgoing: TypeAlias = str | bytes | bytearray | memoryview | dict[str, Any] | list[Any]
"""What `send` accepts."""
ResyncCallback: TypeAlias = Callable[[ResyncEvent], Awaitable[None] | None]
StateCallback: TypeAlias = Callable[[ClientState], Awaitable[None] | None]


def _positive(name: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(name, value, "a finite number > 0")


def _count(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(name, value, "an int >= 1")


@dataclass(frozen=True)
class ClientOptions:
    """The options of `connect`, validated once (see `connect` for their meaning)."""

    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    max_attempts: int | None = None
    on_resync: ResyncCallback | None = None
    on_state: StateCallback | None = None
    max_pending: int = 1000
    max_queue: int = 1000
    ping_interval: float = 20.0
    ping_timeout: float = 10.0
    open_timeout: float = 10.0
    ws_options: Mapping[str, Any] | None = None
    backoff: Backoff = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _positive("backoff_base", self.backoff_base)
        _positive("backoff_cap", self.backoff_cap)
        if self.backoff_cap < self.backoff_base:
            raise ConfigError("backoff_cap", self.backoff_cap, "a number >= backoff_base")
        if self.max_attempts is not None:
            _count("max_attempts", self.max_attempts)
        for name in ("on_resync", "on_state"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise ConfigError(name, value, "None or a callable")
        _count("max_pending", self.max_pending)
        _count("max_queue", self.max_queue)
        _positive("ping_interval", self.ping_interval)
        _positive("ping_timeout", self.ping_timeout)
        _positive("open_timeout", self.open_timeout)
        if self.ws_options is not None and (
            not isinstance(self.ws_options, Mapping) or "uri" in self.ws_options
        ):
            raise ConfigError("ws_options", self.ws_options, "None or a dict of connect kwargs")
        backoff = Backoff(self.backoff_base, self.backoff_cap, self.max_attempts)
        object.__setattr__(self, "backoff", backoff)


class _Attempt(Exception):
    """A connection attempt failed before ``hello``; ``retry`` says whether to try again."""

    def __init__(self, code: int, reason: str, *, retry: bool, after: float | None = None):
        super().__init__(reason)
        self.code, self.reason, self.retry, self.after = code, reason, retry, after


def _close_info(exc: ConnectionClosed) -> tuple[int, str]:
    if exc.rcvd is None:
        return 1006, ""
    return exc.rcvd.code, exc.rcvd.reason


class StabilizerConnection:
    """A WebSocket connection that survives drops: made by `connect`, see there."""

    def __init__(self, url: str, options: ClientOptions) -> None:
        self._options = options
        self._proto = ClientProtocol(
            url,
            max_pending=options.max_pending,
            ping_interval=options.ping_interval,
            ping_timeout=options.ping_timeout,
        )
        self._ws_kwargs: dict[str, Any] = {
            "open_timeout": options.open_timeout,
            # The in-band heartbeat supersedes websockets' keepalive (ws_options may restore it).
            "ping_interval": None,
            **(options.ws_options or {}),
        }
        self._state = ClientState.CONNECTING
        self._final: ClientClosedError | None = None
        self._ever_opened = False
        self._opened_at = 0.0
        self._closing = False
        self._ws: ClientConnection | None = None
        self._runner: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        # One event per "something changed" generation: waiters take the current one, re-check
        # their condition when it fires. Cheaper and simpler than a Condition and its lock.
        self._changed = asyncio.Event()
        self._inbox: deque[Frame] = deque()
        self._reader_blocked = False
        self._failure: Failure | None = None
        self._wake = asyncio.Event()
        self._timer_deadline = math.inf
        self._callbacks: deque[tuple[str, Awaitable[Any]]] = deque()
        self._callback_worker: asyncio.Task[None] | None = None

    # -- public API

    @property
    def state(self) -> ClientState:
        """``connecting``, ``open``, ``reconnecting`` or ``closed``."""
        return self._state

    @property
    def session_id(self) -> str | None:
        """The server's session id (it changes only after a resync); None before the first
        ``hello``."""
        return self._proto.session_id

    @property
    def rtt(self) -> float | None:
        """Round-trip time in seconds of the last answered client ping, if any."""
        return self._proto.rtt

    @property
    def invalid_control_frames(self) -> int:
        """Control frames from the server that were not valid protocol (malformed, unknown
        type, wrong field types, oversize): counted and ignored, never fatal."""
        return self._proto.invalid_control_frames

    async def send(self, message: Outgoing) -> None:
        """Send ``message``: ``str`` as text, bytes-like as binary, ``dict``/``list`` as JSON text.

        While reconnecting the message is buffered and sent once the session resumes. When
        ``max_pending`` messages are buffered (unsent or unacknowledged) this waits for room.
        Raises `ClientClosedError` once the connection is closed for good.
        """
        frame = encode_data(message)
        while True:
            if self._final is not None:
                raise self._final
            if self._closing:
                raise ClientClosedError(1000, "closing")
            changed = self._changed
            async with self._send_lock:
                now = asyncio.get_running_loop().time()
                if self._proto.can_send() and self._final is None and not self._closing:
                    self._proto.send(frame, now)
                    await self._transmit(self._proto.data_to_send())
                    return
                # Full: ask the server for its count now rather than at its next ack.
                self._proto.request_ack(now)
                await self._transmit(self._proto.data_to_send())
            self._wake_timer()
            await changed.wait()

    async def recv(self) -> Frame:
        """The next message (``str`` or ``bytes``), in order, each exactly once.

        Raises `ClientClosedError` once the connection is closed for good and every message
        received before that has been returned.
        """
        while True:
            if self._inbox:
                data = self._inbox.popleft()
                if self._reader_blocked:
                    self._notify()
                return data
            if self._final is not None:
                raise self._final
            await self._changed.wait()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close for good with ``code`` (1000 ends the server-side session too).

        Messages still waiting to be transmitted are discarded. Idempotent.
        """
        if self._final is None:
            self._closing = True
            ws = self._ws
            runner = self._runner
            if runner is not None and runner is not asyncio.current_task():
                runner.cancel()
                await asyncio.wait([runner])
            if ws is not None:
                await _close_draining(ws, code, reason)
            self._finish(code, reason)
        worker = self._callback_worker
        if worker is not None and worker is not asyncio.current_task():
            await asyncio.wait([worker])

    async def __aenter__(self) -> StabilizerConnection:
        await self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __await__(self) -> Generator[Any, None, StabilizerConnection]:
        return self.__aenter__().__await__()

    def __aiter__(self) -> StabilizerConnection:
        return self

    async def __anext__(self) -> Frame:
        """Iteration ends quietly after a normal close and raises after any other."""
        try:
            return await self.recv()
        except ClientClosedError as exc:
            if exc.code in _NORMAL_END:
                raise StopAsyncIteration from None
            raise

    # -- the connection loop

    async def _start(self) -> None:
        if self._runner is None:
            self._runner = asyncio.create_task(self._run())
        while self._state is not ClientState.OPEN and self._final is None:
            await self._changed.wait()
        if self._final is not None and not self._ever_opened:
            raise self._final

    async def _run(self) -> None:
        backoff = self._options.backoff
        loop = asyncio.get_running_loop()
        # `failures` counts consecutive attempts that never got a hello (max_attempts applies to
        # it); `step` picks the backoff window and also grows across connections that open and
        # drop again at once, so a server that accepts and immediately closes is not hammered.
        failures = step = 0
        delay = 0.0
        try:
            while True:
                if delay > 0:
                    await asyncio.sleep(delay)
                try:
                    ws = await self._handshake()
                    code, reason, opened = await self._serve(ws)
                    if not opened:
                        decision = self._proto.connection_lost(code, reason, loop.time())
                        raise _Attempt(code, reason, retry=decision.reconnect)
                except _Attempt as failed:
                    failures += 1
                    step += 1
                    if not failed.retry or backoff.exhausted(failures):
                        if failed.retry:
                            failed.reason += f" (gave up after {failures} attempts)"
                        self._finish(failed.code, failed.reason, cause=failed.__cause__)
                        return
                    delay = backoff.delay(step, random.random()) + (failed.after or 0.0)
                    logger.info(LOG_RETRY, failures, failed.reason, delay)
                    continue
                if self._closing:
                    return
                failures = 0
                if loop.time() - self._opened_at >= backoff.ceiling(step):
                    step = 0  # it outlived the window it waited for: the server is healthy
                decision = self._proto.connection_lost(code, reason, loop.time())
                if not decision.reconnect:
                    self._finish(decision.code, decision.reason)
                    return
                self._set_state(ClientState.RECONNECTING)
                if decision.delay is not None:
                    delay = decision.delay  # the server's drain hint spreads the crowd itself
                else:
                    delay = backoff.delay(step, random.random())
                    step += 1
                logger.info(LOG_RECONNECTING, code, reason, delay)
        except Exception as exc:  # a bug here must not leave callers waiting forever
            logger.exception("client connection loop failed")
            self._finish(1011, f"client error: {exc!r}", cause=exc)

    async def _handshake(self) -> ClientConnection:
        url = self._proto.connect_url()
        try:
            return await ws_connect(url, **self._ws_kwargs)
        except InvalidStatus as exc:
            status = exc.response.status_code
            reason = f"handshake refused: HTTP {status}"
            if not is_retryable_status(status):
                raise _Attempt(1006, reason, retry=False) from exc
            header = exc.response.headers.get("Retry-After")
            after = parse_retry_after(header, now_epoch=time.time())
            raise _Attempt(1006, reason, retry=True, after=after) from exc
        except InvalidURI as exc:
            raise _Attempt(1006, str(exc), retry=False) from exc
        except (OSError, asyncio.TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
            raise _Attempt(1006, f"connect failed: {exc!r}", retry=True) from exc

    async def _serve(self, ws: ClientConnection) -> tuple[int, str, bool]:
        """Read ``ws`` until it ends: (close code, reason, whether its ``hello`` arrived)."""
        loop = asyncio.get_running_loop()
        self._ws, self._failure = ws, None
        self._proto.connection_made(loop.time())
        timer = asyncio.create_task(self._timer(ws))
        # No hello within open_timeout: cut the line, and `recv` raises ConnectionClosed. A loop
        # callback rather than `asyncio.wait_for`, which before Python 3.12 may swallow a
        # cancellation (close()) that arrives as the frame does (see `_timer`).
        no_hello: list[bool] = []

        def hello_timeout() -> None:
            no_hello.append(True)
            ws.transport.abort()

        hello_timer = loop.call_at(loop.time() + self._options.open_timeout, hello_timeout)
        opened = False
        try:
            while True:
                frame = await ws.recv()
                await self._feed(ws, frame)
                if not opened and self._proto.is_open:
                    opened = True
                    hello_timer.cancel()
                failure = self._failure
                if failure is not None:
                    if failure.code == 1011:
                        ws.transport.abort()  # the server is silent: no closing handshake
                    else:
                        await ws.close(failure.code, failure.reason)
                    return failure.code, failure.reason, opened
        except ConnectionClosed as exc:
            if no_hello and not opened:
                return 1006, "no hello within open_timeout", False
            failure = self._failure
            if failure is not None:  # the timer declared the server dead and cut the line
                return failure.code, failure.reason, opened
            code, reason = _close_info(exc)
            return code, reason, opened
        finally:
            self._ws = None
            hello_timer.cancel()
            timer.cancel()
            await asyncio.wait([timer])

    async def _feed(self, ws: ClientConnection, frame: Frame) -> None:
        before = self._proto.buffered
        async with self._send_lock:
            self._proto.receive(frame, asyncio.get_running_loop().time())
            events = self._proto.events_received()
            await self._transmit(self._proto.data_to_send(), ws)
        for event in events:
            if isinstance(event, Message):
                await self._deliver(event.data)
            elif isinstance(event, Opened):
                self._ever_opened = True
                self._opened_at = asyncio.get_running_loop().time()
                self._set_state(ClientState.OPEN)
            elif isinstance(event, ResyncEvent):
                self._emit("on_resync", self._options.on_resync, event)
            elif isinstance(event, Failure):
                self._failure = event
        if self._proto.buffered < before:
            self._notify()  # room for blocked senders
        self._wake_timer()

    async def _deliver(self, data: Frame) -> None:
        if len(self._inbox) >= self._options.max_queue and not self._closing:
            # The app is not reading: stop reading too, so TCP pushes back on the server.
            loop = asyncio.get_running_loop()
            self._reader_blocked = True
            self._proto.pause_reading(loop.time())
            self._wake.set()  # the timer switches from watching the server to keepalives
            while len(self._inbox) >= self._options.max_queue and not self._closing:
                await self._changed.wait()
            self._reader_blocked = False
            self._proto.resume_reading(loop.time())
            self._wake.set()
        self._inbox.append(data)
        self._notify()

    async def _timer(self, ws: ClientConnection) -> None:
        """Tick the protocol at its next deadline, or earlier when `_wake` is set.

        The deadline sets the same event through a loop callback. `asyncio.wait_for` is not used:
        before Python 3.12 it returns the result, swallowing the cancellation, when it is
        cancelled while the awaited event has just fired. `_feed` wakes this task for every
        received frame, and `close()` typically comes right after a `recv()`, so the timer kept
        running, `_serve` waited for it, and `close()` hung until the dead-peer deadline.
        """
        loop = asyncio.get_running_loop()
        while True:
            deadline = self._proto.next_deadline()
            self._timer_deadline = math.inf if deadline is None else deadline
            self._wake = wake = asyncio.Event()
            alarm = None if deadline is None else loop.call_at(deadline, wake.set)
            try:
                await wake.wait()
            finally:
                if alarm is not None:
                    alarm.cancel()
            now = loop.time()
            async with self._send_lock:
                self._proto.tick(now)
                events = self._proto.events_received()
                await self._transmit(self._proto.data_to_send(), ws)
            for event in events:
                if isinstance(event, Failure):
                    self._failure = event
                    ws.transport.abort()
                    return

    async def _transmit(self, frames: list[Frame], ws: ClientConnection | None = None) -> None:
        if ws is None:
            ws = self._ws
        if ws is None:
            return  # between connections: the frames are kept for resending
        for frame in frames:
            if ws.protocol.state is not State.OPEN:
                # Closing: websockets' send() would wait for the end of the closing handshake
                # (up to close_timeout, longer than a paused reader can see it), stalling every
                # caller of the lock. The frame is lost with the connection either way; data
                # frames stay unacknowledged and are resent on resume.
                return
            try:
                await ws.send(frame)
            except ConnectionClosed:
                return  # the reader sees the close; the resume resends what is unacknowledged

    # -- state and callbacks

    def _wake_timer(self) -> None:
        deadline = self._proto.next_deadline()
        if deadline is not None and deadline < self._timer_deadline:
            self._wake.set()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _set_state(self, state: ClientState) -> None:
        if state is self._state:
            return
        self._state = state
        self._notify()
        self._emit("on_state", self._options.on_state, state)

    def _finish(self, code: int, reason: str, cause: BaseException | None = None) -> None:
        if self._final is not None:
            return
        self._final = ClientClosedError(code, reason)
        self._final.__cause__ = cause
        self._set_state(ClientState.CLOSED)

    def _emit(
        self, name: str, callback: Callable[[Any], Awaitable[None] | None] | None, arg: object
    ) -> None:
        if callback is None:
            return
        try:
            result = callback(arg)
        except Exception:
            logger.exception(LOG_CALLBACK_FAILED, name)
            return
        if inspect.isawaitable(result):
            # Awaited in order by one worker, so a slow callback never stalls the reader.
            self._callbacks.append((name, result))
            if self._callback_worker is None or self._callback_worker.done():
                self._callback_worker = asyncio.create_task(self._run_callbacks())

    async def _run_callbacks(self) -> None:
        while self._callbacks:
            name, awaitable = self._callbacks.popleft()
            try:
                await awaitable
            except Exception:
                logger.exception(LOG_CALLBACK_FAILED, name)


async def _close_draining(ws: ClientConnection, code: int, reason: str) -> None:
    """Close ``ws``, reading and discarding what is still queued meanwhile.

    When the app stopped reading, websockets' flow control has paused the socket, so the
    server's answer to our close frame would never be read and the closing handshake would
    wait out its whole ``close_timeout``.
    """
    closer = asyncio.ensure_future(ws.close(code, reason))
    try:
        while not closer.done():
            reader = asyncio.ensure_future(ws.recv())
            await asyncio.wait((closer, reader), return_when=asyncio.FIRST_COMPLETED)
            if not reader.done():
                reader.cancel()
                await asyncio.wait((reader,))
            if not reader.cancelled() and reader.exception() is not None:
                break  # closed: the closer finishes at once
        await closer
    except Exception:  # already broken: there is nothing more to tell the server
        pass


def connect(
    url: str,
    *,
    backoff_base: float = 0.5,
    backoff_cap: float = 30.0,
    max_attempts: int | None = None,
    on_resync: ResyncCallback | None = None,
    on_state: StateCallback | None = None,
    max_pending: int = 1000,
    max_queue: int = 1000,
    ping_interval: float = 20.0,
    ping_timeout: float = 10.0,
    open_timeout: float = 10.0,
    ws_options: Mapping[str, Any] | None = None,
) -> StabilizerConnection:
    """A WebSocket connection to a stabilized endpoint that survives drops and server restarts.

    Use it as ``async with connect(url) as conn:`` (or ``conn = await connect(url)`` and
    ``await conn.close()`` later). Entering waits for the server's ``hello``; it raises
    `ClientClosedError` if the connection can never be opened. Then ``await conn.send(x)``,
    ``await conn.recv()`` and ``async for message in conn``.

    When the connection drops (or the server drains, restarts or misses heartbeats) the client
    reconnects with exponential backoff and full jitter and resumes the session: messages are
    neither lost nor duplicated, in either direction, and the caller notices nothing. If the
    server cannot resume, it starts a new session and ``on_resync`` is called (see
    `ResyncEvent`). Close codes 1000/1001 from the server, 1008, 1009, the app's own codes and
    refused handshakes other than 429/5xx end the connection for good.

    Args:
        url: ``ws://`` or ``wss://`` URL; its query parameters are kept, ``stabilizer*`` ones
            are added.
        backoff_base: seconds; after a drop the first reconnect waits a uniformly random
            ``[0, backoff_base)`` (full jitter); each further failed attempt, or a connection
            that drops again before outliving its window, doubles the window. A server's
            ``reconnect`` hint (drain) replaces the backoff with its ``after_ms``.
        backoff_cap: seconds; the largest backoff window.
        max_attempts: consecutive failed attempts before giving up (``None``: never give up).
            A refused handshake's ``Retry-After`` is added to the backoff.
        on_resync: ``(ResyncEvent) -> None`` or async; called when a resume was refused.
        on_state: ``(ClientState) -> None`` or async; called on every state change.
            Async callbacks run in order on a separate task, never blocking the connection.
        max_pending: outbound messages held while reconnecting or not yet acknowledged by the
            server; ``send`` waits for room beyond it (backpressure). At half of it the client
            pings to learn the server's count, so a steady sender is never stalled by it.
        max_queue: inbound messages held for ``recv``; beyond it the client stops reading from
            the socket until the app catches up (TCP pushes back on the server), while still
            sending ``ack`` frames often enough that the server's heartbeat keeps it alive.
        ping_interval: seconds of silence from the server before the client pings it.
        ping_timeout: seconds after that ping with nothing received before the connection is
            declared dead and resumed.
        open_timeout: seconds allowed for each handshake, and again for the ``hello``.
        ws_options: extra keyword arguments for ``websockets.asyncio.client.connect``
            (``additional_headers``, ``subprotocols``, ``max_size``, ``ssl``, ...). Its
            protocol-level keepalive is off by default (``ping_interval=None``).

    Raises:
        ConfigError: an option is invalid (the message names it).
    """
    options = ClientOptions(
        backoff_base=backoff_base,
        backoff_cap=backoff_cap,
        max_attempts=max_attempts,
        on_resync=on_resync,
        on_state=on_state,
        max_pending=max_pending,
        max_queue=max_queue,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        open_timeout=open_timeout,
        ws_options=ws_options,
    )
    if not isinstance(url, str):
        raise ConfigError("url", url, "a ws:// or wss:// URL string")
    return StabilizerConnection(url, options)
