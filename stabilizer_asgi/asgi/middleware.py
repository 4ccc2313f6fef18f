"""`StabilizerMiddleware`: scope dispatch. Per-connection state lives in `Connection`."""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import parse_qsl

from ..config import StabilizerConfig
from ..core.wire import OptIn, split_query
from ..exceptions import ConfigError
from ..manager import Stabilizer
from ..types import ASGIApp, Receive, Scope, Send
from . import _runtime, lifespan, routes
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
    `Stabilizer` you created yourself (e.g. to broadcast from a background job). Bad settings
    raise `ConfigError`, except when the middleware is built inside a running event loop (by
    Starlette's lazy middleware stack): then lifespan startup fails with the error's message.
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
        self._config_error: ConfigError | None = None
        try:
            if manager is not None:
                if config is not None or kwargs:
                    raise ConfigError("manager", manager, "either manager= or settings, not both")
                self.manager = manager
            else:
                self.manager = Stabilizer(config, **kwargs)
        except ConfigError as exc:
            if not _runtime.library():
                raise
            # Built inside a running event loop: Starlette and FastAPI build their middleware
            # at the first event, which under uvicorn is lifespan startup, and uvicorn takes an
            # exception there for "lifespan unsupported" (`--lifespan auto`), logs one line and
            # serves 500s. Fail that startup instead, with the message, and every other event.
            self._config_error = exc
            return
        cfg = self.manager.config
        self.config = cfg
        self._client_id = cfg.client_id or query_client_id
        self._routes = routes.build(self.manager)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._config_error is not None:
            await lifespan.refuse(self._config_error, scope, receive, send)
            return
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
            # In cluster mode, duplicate_client across nodes and tokens of sessions held
            # elsewhere need the cluster's word; nothing else in a handshake waits for it.
            if self.manager.cluster.others and not await self._cluster_admits(
                scope, opened, client, ip
            ):
                await self._deny(scope, receive, send, 409, "duplicate_client")
                return
            try:
                await self.app(scope, opened.receive, opened.send)
            finally:
                try:
                    self.manager._ended(opened)
                    # The slot is free only once the transport is: a close still waiting to be
                    # written gets `close_timeout`, then the transport is aborted.
                    await opened.settle()
                finally:
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
            await lifespan.run(self.app, self.manager, scope, receive, send)
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
        manager.cluster.check_started()
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
                        old._conn.abort(1000, "replaced")
            control = opt_in.opted_in
            mode = cfg.heartbeat
            heartbeat = mode == "always" or (mode == "auto" and control)
            remote = (client[0], client[1]) if client else None
            if not manager._server_probed:
                manager._probe_server(receive)
            session, resume, resume_reason = manager._open_session(opt_in, client_id, remote)
            conn = Connection(manager, session, receive, send, control=control, heartbeat=heartbeat)
            if resume_reason == "unknown":
                ack = None if opt_in.ack_invalid else opt_in.resume_ack
                manager._bind(conn, resume, resume_reason, opt_in.resume_token, ack)
            else:
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

    async def _cluster_admits(
        self, scope: Scope, conn: Connection, client: tuple[str, int] | None, ip: str | None
    ) -> bool:
        """The cluster-wide part of the handshake; False (slot released) to refuse it."""
        manager = self.manager
        if conn.resume_reason == "unknown" and conn.resume_token is not None:
            # Held by another node, or parked: taken over from there (the connection then
            # belongs to that session), or refused with the cluster's reason.
            await manager._resume_from_cluster(conn)
            if conn.resume_ack is not None:
                scope["state"]["stabilizer_session"] = conn.session
                return True
        if await manager._claim_client(conn.session):
            return True
        manager._connecting.pop(conn.session.id, None)
        manager._rejected("duplicate_client", client)
        manager._release(ip)
        return False

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


def _route_path(scope: Scope) -> str:
    path: str = scope.get("path", "")
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path
