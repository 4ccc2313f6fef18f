"""`WebSocketConnectionManager`: the seed's manager, as a view on a native `Stabilizer`.

Connections are native sessions keyed by the seed's client id (`Session.client_id`): they sit
in the manager's registry, count against its limits and memory, and get its heartbeat,
broadcasts, stats and hooks. With `StabilizerMiddleware(app, manager=ws_manager.stabilizer)`
installed, `connect()` adopts the session the middleware made for the websocket; without it,
compat attaches one itself (`_standalone.Link`).
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any

from starlette.websockets import WebSocketState

from .. import exceptions as native_errors
from ..config import StabilizerConfig
from ..core.session import Session, SessionState, estimate_size
from ..manager import Stabilizer
from . import _standalone
from ._tokens import TokenStore
from .config import (
    BroadcastResult,
    CompressionMode,
    ShutdownReport,
    WebSocketConfig,
)
from .exceptions import (
    BroadcastFailedError,
    ConnectionLimitExceededError,
    ConnectionNotFoundError,
    MemoryLimitExceededError,
    WebSocketStabilizerError,
)

logger = logging.getLogger("stabilizer_asgi.compat")

# Where `connect(..., metadata=...)` is kept: in the session's user data, so it is
# memory-accounted like the seed's, and native code finds it as `session.data[METADATA_KEY]`.
METADATA_KEY = "seed.metadata"
MAX_RECONNECT_TOKENS = 10_000
# Seed settings this design has no use for: said once, loudly, when set to anything but the
# seed's default (docs/migration.md explains each).
INERT_SETTINGS = {
    "max_concurrent_cleanup": (
        100,
        "shutdown never waits on one close at a time: each close is handed to its connection "
        "without blocking",
    ),
    "max_concurrent_broadcast": (
        1000,
        "broadcast never waits on a recipient; what a slow client may hold is bounded by "
        "max_queue_messages/max_queue_bytes and slow_consumer",
    ),
    "memory_check_interval": (
        60.0,
        "memory is accounted on every change, so limits hold at every moment, not per interval",
    ),
}
INERT_WARNING = "%s=%r has no effect here: %s"
COMPRESSION_NONE_WARNING = (
    "compression='none' cannot be applied by the application: permessage-deflate is negotiated "
    "by the server; turn it off there (uvicorn --ws-per-message-deflate false)"
)
_CONNECTED = SessionState.CONNECTED


class WebSocketConnectionManager:
    """The seed's API (`connect`, `send_to_client`, `broadcast`, tokens, user data, shutdown)
    over `self.stabilizer`, the native manager that does the work.

    `native` keyword arguments are `StabilizerConfig` fields that override what `config` maps
    to (e.g. `secret=`, `max_connections_per_ip=`, `on_disconnect=`); `max_reconnect_tokens`
    bounds the outstanding reconnect tokens.
    """

    def __init__(
        self,
        config: WebSocketConfig | None = None,
        *,
        max_reconnect_tokens: int = MAX_RECONNECT_TOKENS,
        **native: Any,
    ) -> None:
        self.config = config = config or WebSocketConfig()
        if not isinstance(config, WebSocketConfig):
            raise native_errors.ConfigError("config", config, "None or a WebSocketConfig")
        config.validate()
        if (
            not isinstance(max_reconnect_tokens, int)
            or isinstance(max_reconnect_tokens, bool)
            or max_reconnect_tokens < 1
        ):
            raise native_errors.ConfigError(
                "max_reconnect_tokens", max_reconnect_tokens, "an int >= 1"
            )
        options = config.native_options()
        options.update(native)
        self.stabilizer = Stabilizer(StabilizerConfig.from_kwargs(None, **options))
        self._links: dict[str, _standalone.Link] = {}
        self._tokens = TokenStore(max_reconnect_tokens)
        self._failures: list[tuple[str, str]] | None = None
        # (client id, session id) registered by `connect()` in this endpoint's context, so that
        # an endpoint whose own connection is already over can call `disconnect()` (as the
        # seed's examples do on WebSocketDisconnect) without raising and without closing a
        # newer connection of the same client.
        self._endpoint: ContextVar[tuple[str, str] | None] = ContextVar(
            f"stabilizer_compat_{id(self)}", default=None
        )
        logging.getLogger("stabilizer_asgi").setLevel(config.log_level)
        if config.compression is CompressionMode.NONE:
            logger.warning(COMPRESSION_NONE_WARNING)
        for name, (default, why) in INERT_SETTINGS.items():
            value = getattr(config, name)
            if value != default:
                logger.warning(INERT_WARNING, name, value, why)

    # ------------------------------------------------------------------ lifecycle

    # `start` and `graceful_shutdown` run the manager's lifespan hooks, as the middleware's
    # lifespan does; behind the middleware they run twice, which they allow.

    async def start(self) -> None:
        """Take connections (again, after a shutdown) and start the background service
        (heartbeat, sweeps) and the backend."""
        await self.stabilizer._start()

    async def graceful_shutdown(self, timeout: float = 30.0) -> ShutdownReport:
        """Close every connection (1012), wait up to `timeout` for the endpoints to end, then
        stop the background service."""
        links = list(self._links.values())
        report = await self.stabilizer.shutdown(timeout)
        await self.stabilizer._stop()
        refused = sum(1 for link in links if link.close_failed)
        return ShutdownReport(
            closed_count=report.closed - refused,
            failed_count=report.failed + refused,
            duration_seconds=report.duration,
        )

    # ------------------------------------------------------------------ connections

    async def connect(
        self, client_id: str, websocket: Any, metadata: dict[str, Any] | None = None
    ) -> None:
        """Register an accepted websocket under `client_id`, replacing (close 1000
        "reconnected") a connection already registered under it."""
        if not client_id:
            raise ConnectionNotFoundError("client_id cannot be empty")
        if not isinstance(client_id, str):
            raise TypeError(f"client_id must be a str, got {type(client_id).__name__}")
        stab = self.stabilizer
        limit = stab.config.max_memory_per_session
        if metadata and limit is not None:
            size = estimate_size(METADATA_KEY) + estimate_size(metadata)
            if size > limit:
                raise MemoryLimitExceededError(
                    f"Connection memory ({size} bytes) exceeds per-connection limit ({limit} bytes)"
                )
        if (
            _standalone.is_asgi(websocket)
            and websocket.application_state is not WebSocketState.CONNECTED
        ):
            raise WebSocketStabilizerError("accept the websocket before connect()")
        adopted = self._registered_session(websocket)
        if adopted is not None:
            self._store_metadata(adopted, metadata)
            await self._replace(client_id, keep=adopted)
            stab.set_client_id(adopted.id, client_id)
            self._endpoint.set((client_id, adopted.id))
            return
        await self._replace(client_id, keep=None)
        session = await self._attach(client_id, websocket, metadata)
        self._endpoint.set((client_id, session.id))

    def _registered_session(self, websocket: Any) -> Session | None:
        """The session already made for this websocket: by a `StabilizerMiddleware`, or by an
        earlier `connect()` (both leave it in `websocket.state`)."""
        if not _standalone.is_asgi(websocket):
            return None
        state = websocket.scope.get("state") or {}
        found = state.get("stabilizer_session")
        if not isinstance(found, Session):
            return None
        if state.get("stabilizer") is not self.stabilizer:
            raise WebSocketStabilizerError(
                "this websocket is served by a StabilizerMiddleware with another manager: "
                "install it with StabilizerMiddleware(app, manager=ws_manager.stabilizer)"
            )
        if found.state is not _CONNECTED:
            raise WebSocketStabilizerError("this websocket's connection is already over")
        return found

    async def _attach(
        self, client_id: str, websocket: Any, metadata: dict[str, Any] | None
    ) -> Session:
        """Open a session for a websocket no middleware wraps."""
        stab = self.stabilizer
        scope = websocket.scope if _standalone.is_asgi(websocket) else {}
        client = scope.get("client")
        ip = client[0] if client else None
        stab._ensure_service()
        if not stab._server_probed and _standalone.is_asgi(websocket):
            stab._probe_server(websocket._receive)
        refusal = stab._admit(ip)
        if refusal is not None:
            stab._rejected(refusal, client)
            if refusal == "draining":
                raise ConnectionLimitExceededError("the manager is shut down: call start() first")
            raise ConnectionLimitExceededError(
                f"Maximum connections ({stab.config.max_connections}) reached"
                if refusal == "capacity"
                else f"connection limit reached ({refusal})"
            )
        link = _standalone.Link(stab, websocket, ip, self._transport_error, self._link_ended)
        remote = (client[0], client[1]) if client else None
        session = stab._new_session(client_id, False, remote)
        try:
            await link.open(session, stab.config.heartbeat == "always", metadata, METADATA_KEY)
        except native_errors.MemoryLimitExceededError as exc:
            raise MemoryLimitExceededError(str(exc)) from None
        if not link.ended:
            self._links[session.id] = link
        return session

    def _store_metadata(self, session: Session, metadata: dict[str, Any] | None) -> None:
        if metadata:
            try:
                session.data[METADATA_KEY] = metadata
            except native_errors.MemoryLimitExceededError as exc:
                raise MemoryLimitExceededError(str(exc)) from None

    async def _replace(self, client_id: str, keep: Session | None) -> None:
        for old in self.stabilizer.by_client(client_id):
            if old is not keep:
                await self._drop(old, 1000, "reconnected")

    async def _drop(self, session: Session, code: int, reason: str) -> None:
        """Close a connection and forget its client id (its session ends when its endpoint
        returns, or at once for one compat attached itself)."""
        stab = self.stabilizer
        link = self._links.pop(session.id, None)
        if session.state is not SessionState.CLOSED:
            stab.set_client_id(session.id, None)
        await stab.close(session.id, code, reason)
        if link is not None:
            link.end()

    async def disconnect(self, client_id: str) -> None:
        """Close the client's connection (1000) and forget it.

        Called by the endpoint that registered it, after its own connection is over (the
        client left, was replaced, evicted or timed out), it returns quietly.
        """
        session = self._session(client_id)
        mine = self._endpoint.get()
        if mine is not None and mine[0] == client_id:
            self._endpoint.set(None)
            if session is None or session.id != mine[1]:
                return
        if session is None:
            raise ConnectionNotFoundError(f"Connection not found: {client_id}")
        await self._drop(session, 1000, "normal closure")

    def _session(self, client_id: str) -> Session | None:
        """The newest live session registered under `client_id`."""
        if not isinstance(client_id, str) or not client_id:
            return None
        for session in reversed(self.stabilizer.by_client(client_id)):
            if session.state is _CONNECTED:
                return session
        return None

    def _link_ended(self, session: Session) -> None:
        self._links.pop(session.id, None)

    def _transport_error(self, session: Session, exc: Exception) -> None:
        failures = self._failures
        if failures is not None and session.client_id is not None:
            failures.append((session.client_id, str(exc) or type(exc).__name__))

    # ------------------------------------------------------------------ sending

    async def send_to_client(self, client_id: str, message: str | dict[str, Any]) -> bool:
        """Send to one client (str → text frame, dict → JSON text); False if it is not
        connected or the frame could not be handed over."""
        session = self._session(client_id)
        if session is None:
            return False
        return await self.stabilizer.send(session.id, message)

    async def broadcast(
        self, message: str | dict[str, Any], exclude_client: str | None = None
    ) -> BroadcastResult:
        """Send to every connection (the native broadcast: never waits on a slow client)."""
        excluded = self.stabilizer.by_client(exclude_client) if exclude_client else []
        failures: list[tuple[str, str]] = []
        self._failures = failures
        try:
            result = await self.stabilizer.broadcast(
                message, exclude=[session.id for session in excluded] or None
            )
        finally:
            self._failures = None
        total = result.total + sum(1 for s in excluded if s.state is not SessionState.CLOSED)
        failed = result.dropped + result.failed
        outcome = BroadcastResult(total, result.delivered, failed, failures)
        if failed and failed == total:
            raise BroadcastFailedError(f"Broadcast failed for all {total} clients")
        return outcome

    async def handle_pong(self, client_id: str) -> None:
        """Nothing left to do: every inbound frame (the "pong" included, which never reaches
        the endpoint) already counts as a sign of life."""

    # ------------------------------------------------------------------ queries

    def get_active_connections(self) -> list[str]:
        """Client ids of the live connections."""
        seen: dict[str, None] = {}
        for session in self.stabilizer.sessions():
            if session.client_id is not None and session.state is _CONNECTED:
                seen[session.client_id] = None
        return list(seen)

    def get_connection_count(self) -> int:
        """Live connections: every connected session in the registry."""
        return sum(1 for s in self.stabilizer.sessions() if s.state is _CONNECTED)

    def get_memory_usage(self) -> dict[str, int | float]:
        """Bytes accounted to all sessions (user data, metadata, buffered frames)."""
        total = self.stabilizer.memory
        count = self.get_connection_count()
        return {
            "total_memory": total,
            "connection_count": count,
            "per_connection_average": total / count if count else 0.0,
        }

    # ------------------------------------------------------------------ user data

    async def set_user_data(self, client_id: str, key: str, value: Any) -> None:
        """Store `value` in the connection's memory-accounted user data."""
        session = self._session(client_id)
        if session is None:
            raise ConnectionNotFoundError(f"Connection not found: {client_id}")
        try:
            session.data[key] = value
        except native_errors.MemoryLimitExceededError as exc:
            raise MemoryLimitExceededError(str(exc)) from None

    async def get_user_data(self, client_id: str, key: str) -> Any | None:
        """A value stored with `set_user_data`, or None."""
        session = self._session(client_id)
        return None if session is None else session.data.get(key)

    # ------------------------------------------------------------------ tokens

    def generate_reconnect_token(self, client_id: str) -> str:
        """A single-use token naming `client_id`, valid for `reconnect_token_ttl`."""
        if not self.config.enable_reconnect:
            raise WebSocketStabilizerError("reconnect tokens are off (enable_reconnect=False)")
        ttl = self.config.reconnect_token_ttl.total_seconds()
        return self._tokens.issue(str(client_id), ttl)

    async def validate_reconnect_token(self, token: str) -> str | None:
        """The client id a token names (the token is used up); `InvalidTokenError` or
        `TokenExpiredError` otherwise."""
        return self._tokens.redeem(token)
