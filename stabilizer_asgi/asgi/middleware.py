"""`StabilizerMiddleware`: scope dispatch. Per-connection state lives in `Connection`."""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import parse_qsl

import anyio

from ..config import StabilizerConfig
from ..core.wire import OptIn, split_query
from ..exceptions import ConfigError
from ..manager import Stabilizer
from ..types import ASGIApp, Message, Receive, Scope, Send
from . import routes
from .connection import Connection

logger = logging.getLogger("stabilizer_asgi")
_NO_OPT_IN = OptIn()
_MAX_CLIENT_ID = 256


def query_client_id(scope: Scope) -> str | None:
    """The default `client_id`: the `client_id` query parameter, if any."""
    query = scope.get("query_string") or b""
    if b"client_id=" not in query:
        return None
    for name, value in parse_qsl(query.decode("latin-1")):
        if name == "client_id":
            return value[:_MAX_CLIENT_ID] or None
    return None


class StabilizerMiddleware:
    """Adds heartbeat, sessions, broadcast, limits and drain to any ASGI app's websockets.

    `app.add_middleware(StabilizerMiddleware, heartbeat_interval=25)` or
    `StabilizerMiddleware(app, config=StabilizerConfig(...))`; pass `manager=` to share a
    `Stabilizer` you created yourself (e.g. to broadcast from a background job).
    """

    # `app` is positional-only: with `**kwargs` beside it, type checkers would otherwise refuse
    # `app.add_middleware(StabilizerMiddleware, ...)` (Starlette's factory protocol may pass
    # any keyword, including one named "app").
    def __init__(
        self,
        app: ASGIApp,
        /,
        config: StabilizerConfig | None = None,
        *,
        manager: Stabilizer | None = None,
        **kwargs: Any,
    ) -> None:
        self.app = app
        if manager is not None:
            if config is not None or kwargs:
                raise ConfigError("manager", manager, "either manager= or settings, not both")
            self.manager = manager
        else:
            self.manager = Stabilizer(config, **kwargs)
        cfg = self.manager.config
        self.config = cfg
        self._client_id = cfg.client_id or query_client_id
        self._routes = routes.build(self.manager)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            # Set up synchronously, then await the app right here: a websocket keeps this one
            # coroutine frame alive for its whole life, not two (~400 bytes per connection).
            client = scope.get("client")
            ip = client[0] if client else None
            opened = self._open(scope, receive, send, client, ip)
            if not isinstance(opened, Connection):
                await self._deny(scope, receive, send, *opened)
                return
            try:
                await self.app(scope, opened.receive, opened.send)
            finally:
                self.manager._ended(opened)
                self.manager._release(ip)
        elif kind == "http":
            handler = self._routes.get(_route_path(scope))
            if handler is not None:
                await handler(scope, receive, send)
                return
            state = scope.get("state")
            state = dict(state) if state else {}
            state["stabilizer"] = self.manager
            scope["state"] = state
            await self.app(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _open(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        client: tuple[str, int] | None,
        ip: str | None,
    ) -> Connection | tuple[int, str]:
        """Admit a websocket and make its session and `Connection`, or say how to refuse it."""
        manager = self.manager
        manager._ensure_service()
        query = scope.get("query_string") or b""
        opt_in = _NO_OPT_IN
        if b"stabilizer" in query:
            scope["query_string"], opt_in = split_query(query)
        refusal = manager._admit(ip)
        if refusal is not None:
            manager._rejected(refusal, client)
            return 503, refusal
        try:
            client_id = self._find_client_id(scope)
            cfg = self.config
            if client_id is not None and cfg.duplicate_client != "allow":
                existing = manager.by_client(client_id)
                if existing and cfg.duplicate_client == "reject":
                    manager._rejected("duplicate_client", client)
                    manager._release(ip)
                    return 409, "duplicate_client"
                for old in existing:
                    if old._conn is not None:
                        old._conn._abort(1000, "replaced")
            control = opt_in.opted_in
            mode = cfg.heartbeat
            heartbeat = mode == "always" or (mode == "auto" and control)
            remote = (client[0], client[1]) if client else None
            if not manager._server_probed:
                manager._probe_server(receive)
            session, resume, resume_reason = manager._open_session(opt_in, client_id, remote)
            conn = Connection(manager, session, receive, send, control=control, heartbeat=heartbeat)
            manager._bind(conn, resume, resume_reason)
        except BaseException:
            manager._release(ip)
            raise
        # Servers hand each connection a shallow copy of the lifespan state: copy it again
        # rather than writing into a dict the server or another middleware may share.
        state = scope.get("state")
        state = dict(state) if state else {}
        state["stabilizer"] = manager
        state["stabilizer_session"] = session
        scope["state"] = state
        return conn

    def _find_client_id(self, scope: Scope) -> str | None:
        try:
            value = self._client_id(scope)
        except Exception:
            logger.exception("client_id callable failed; treating the client as anonymous")
            return None
        return value if isinstance(value, str) and value else None

    async def _deny(
        self, scope: Scope, receive: Receive, send: Send, status: int, reason: str
    ) -> None:
        """Refuse a handshake before the app runs: HTTP `status` if the server can, else close."""
        message = await receive()
        if message.get("type") != "websocket.connect":
            return
        if "websocket.http.response" in (scope.get("extensions") or {}):
            body = json.dumps({"error": reason}).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
            if status == 503:
                headers.append((b"retry-after", str(self.config.retry_after).encode()))
            await send(
                {"type": "websocket.http.response.start", "status": status, "headers": headers}
            )
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1013 if status == 503 else 1008})

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Host the manager's background service for as long as the app's lifespan runs."""
        manager = self.manager

        async def lifespan_receive() -> Message:
            message = await receive()
            kind = message.get("type")
            if kind == "lifespan.startup":
                # A new run of the same app object (e.g. one `TestClient(app)` per test) serves
                # again: the previous run's shutdown must not keep refusing every handshake.
                manager._draining = False
                routes.warn_unprotected(manager)
            elif kind == "lifespan.shutdown":
                # Servers that send this before closing sockets get a graceful shutdown here.
                await manager.shutdown()
            return message

        error: Exception | None = None
        async with anyio.create_task_group() as tg:
            await tg.start(manager._run_service)
            try:
                await self.app(scope, lifespan_receive, send)
            except Exception as exc:
                error = exc
            finally:
                tg.cancel_scope.cancel()
        if error is not None:
            # Raised outside the task group so the server gets the app's own exception (e.g.
            # an app without lifespan support), not an ExceptionGroup wrapping it.
            try:
                raise error
            finally:
                error = None


def _route_path(scope: Scope) -> str:
    path: str = scope.get("path", "")
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path
