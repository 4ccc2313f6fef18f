"""A session for a websocket no `StabilizerMiddleware` wraps (the seed's own set-up).

The app accepted the websocket before `connect()`, so compat does now what the middleware
does at the handshake: take a connection slot, make the session and its `Connection`, and route
the websocket's traffic through that `Connection` — for a Starlette `WebSocket` by rebinding its
`receive`/`send` to the connection's (so heartbeat, `max_message_size` and liveness see every
frame the endpoint reads), for any other object (a test double) by writing through its public
`send_text`/`send_bytes`/`close` (no heartbeat: compat cannot see what the endpoint reads).

The session ends, as the middleware would end it when the endpoint returns, as soon as its
connection is over: a close went out, the client's disconnect came in, or a write failed.
Compat (this module and `compat/manager.py`) is, beside the middleware, the manager's other
driver: it uses the same lifecycle hooks the middleware does (`_start`, `_stop`,
`_ensure_service`, `_probe_server`, `_admit`, `_rejected`, `_new_session`, `_ended`,
`_release`) and none of its state; of Starlette's WebSocket it rebinds `_receive`/`_send`
(and a cached `_state`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
from starlette.datastructures import State
from starlette.websockets import WebSocket

from ..asgi.connection import Connection
from ..core.session import Session
from ..types import Message

if TYPE_CHECKING:
    from ..manager import Stabilizer


class Link:
    """One websocket compat attached to a session itself, between the connection and the
    server (or the object's own methods)."""

    __slots__ = (
        "conn",
        "close_failed",
        "ended",
        "_mgr",
        "_ip",
        "_ws",
        "_raw",
        "_on_error",
        "_on_end",
    )

    def __init__(
        self,
        manager: Stabilizer,
        websocket: Any,
        ip: str | None,
        on_error: Callable[[Session, Exception], None],
        on_end: Callable[[Session], None],
    ) -> None:
        self._mgr = manager
        self._ip = ip
        self._ws = websocket
        self.ended = False
        self._on_error = on_error
        self._on_end = on_end
        self.close_failed = False
        # A Starlette WebSocket's own ASGI callables, taken before they are rebound.
        self._raw = (websocket._receive, websocket._send) if is_asgi(websocket) else None
        self.conn: Connection  # set by `open`

    @property
    def session(self) -> Session:
        return self.conn.session

    async def open(
        self, session: Session, heartbeat: bool, metadata: dict[str, Any] | None, key: str
    ) -> None:
        """Register `session` as open on this websocket; on any failure nothing is left."""
        conn = self.conn = Connection(
            self._mgr,
            session,
            self._receive,
            self._send,
            control=False,
            heartbeat=heartbeat and self._raw is not None,
        )
        try:
            if metadata:
                session.data[key] = metadata
            # Goes through the connection's own accept path (registration, heartbeat,
            # on_connect); `_send` does not pass the accept on: the app sent it already.
            await conn.send({"type": "websocket.accept"})
        except BaseException:
            self.end()
            raise
        if self._raw is not None:
            self._route(self._ws, conn, session)

    def _route(self, websocket: WebSocket, conn: Connection, session: Session) -> None:
        """From now on the endpoint reads and writes through `conn`, and finds the manager and
        its session in `websocket.state` as behind the middleware (a copy of the state dict:
        the server's may be shared)."""
        websocket._receive = self._app_receive
        websocket._send = conn.send
        state = dict(websocket.scope.get("state") or {})
        state["stabilizer"] = self._mgr
        state["stabilizer_session"] = session
        websocket.scope["state"] = state
        if "_state" in vars(websocket):  # Starlette caches `websocket.state` once read
            websocket._state = State(state)

    def end(self) -> None:
        """The connection is over: end the session and free its slot (once)."""
        if self.ended:
            return
        self.ended = True
        self._mgr._ended(self.conn)
        self._mgr._release(self._ip)
        self._on_end(self.conn.session)

    async def _app_receive(self) -> Message:
        """The endpoint's `receive`: once it is told the connection is over (the client left,
        or compat/the manager closed it), the session ends."""
        message = await self.conn.receive()
        if message.get("type") == "websocket.disconnect":
            self.end()
        return message

    async def _receive(self) -> Message:
        if self._raw is None:
            await anyio.sleep_forever()  # never read: the endpoint reads the object itself
        assert self._raw is not None
        message: Message = await self._raw[0]()
        if message.get("type") == "websocket.disconnect":
            session = self.conn.session
            if session.close_code is None:
                session.close_code = message.get("code", 1005)
                session.close_reason = message.get("reason") or ""
            self.end()
        return message

    async def _send(self, message: Message) -> None:
        kind = message.get("type")
        if kind == "websocket.accept":
            return
        try:
            if self._raw is not None:
                await self._raw[1](message)
            elif kind == "websocket.send":
                text = message.get("text")
                if text is not None:
                    await self._ws.send_text(text)
                else:
                    await self._ws.send_bytes(message.get("bytes") or b"")
            elif kind == "websocket.close":
                await self._ws.close(code=message.get("code", 1000), reason=message.get("reason"))
        except Exception as exc:
            if kind == "websocket.close":
                self.close_failed = True
            self._on_error(self.conn.session, exc)
            self.end()
            raise
        except BaseException:  # cancelled: a close given up on after close_timeout is final
            if kind == "websocket.close":
                self.close_failed = True
                self.end()
            raise
        if kind == "websocket.close":
            self.end()


def is_asgi(websocket: object) -> bool:
    """A Starlette (or FastAPI) WebSocket, whose ASGI callables compat can route."""
    return isinstance(websocket, WebSocket)
