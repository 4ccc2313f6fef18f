"""The middleware's own HTTP routes: stats, health, drain and the browser client.

They are answered here and never reach the app. Every admin route checks access through one
helper, `admin_access`: with `admin_token` set, `Authorization: Bearer <token>` (constant-time);
without it, read-only routes answer only a direct loopback request (no forwarding header) and
destructive ones (drain) answer nobody over HTTP.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from ..types import Receive, Scope, Send

if TYPE_CHECKING:
    from ..manager import Stabilizer

Handler = Callable[[Scope, Receive, Send], Awaitable[None]]
_MAX_PERIOD = 3600.0
logger = logging.getLogger("stabilizer_asgi")

ADMIN_UNPROTECTED = "admin_unprotected"
"""WARNING at startup: admin routes are served without `admin_token` (event name)."""

# Headers a proxy adds when it passes a request on. A request carrying any of them did not come
# straight from a local process, whatever the ASGI `client` says (a proxy on the same host, or a
# server that rewrote `client` from a header the caller chose).
FORWARDING_HEADERS = frozenset(
    {
        b"forwarded",
        b"via",
        b"x-real-ip",
        b"x-client-ip",
        b"true-client-ip",
        b"cf-connecting-ip",
        b"fastly-client-ip",
        b"x-cluster-client-ip",
        b"x-original-forwarded-for",
    }
)


async def respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = b"application/json",
    headers: list[tuple[bytes, bytes]] | None = None,
    head: bool = False,
    cache: bytes = b"no-store",
) -> None:
    all_headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", cache),
        *(headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode()


async def _error(send: Send, status: int, message: str, **extra: Any) -> None:
    headers = [(b"www-authenticate", b"Bearer")] if status == 401 else []
    if "allow" in extra:
        headers.append((b"allow", extra.pop("allow").encode()))
    await respond(send, status, _json({"error": message, **extra}), headers=headers)


def is_loopback(scope: Scope) -> bool:
    """Whether the ASGI `client` address is a loopback one (says nothing about proxies)."""
    client = scope.get("client")
    if not client:
        return False
    try:
        return ipaddress.ip_address(client[0]).is_loopback
    except ValueError:
        return client[0] in ("localhost", "testclient")


def _bearer(scope: Scope) -> bytes | None:
    """The bearer token of the request (raw bytes), or None without one."""
    for name, value in scope.get("headers") or ():
        if name.lower() == b"authorization":
            scheme, _, token = value.partition(b" ")
            token = token.strip()
            return token if scheme.lower() == b"bearer" and token else None
    return None


def is_forwarded(scope: Scope) -> bool:
    """Whether the request carries a forwarding header (`Forwarded`, `X-Forwarded-*`, ...)."""
    for name, _ in scope.get("headers") or ():
        name = name.lower()
        if name in FORWARDING_HEADERS or name.startswith(b"x-forwarded-"):
            return True
    return False


async def admin_access(
    manager: Stabilizer, scope: Scope, send: Send, *, destructive: bool = False
) -> bool:
    """Whether an admin request may proceed; on refusal the 401/403 answer has been sent.

    The one access check of every admin route (stats, drain, and any later read-only route
    such as metrics or a dashboard). With `admin_token` set: `Authorization: Bearer <token>`,
    compared in constant time, from anywhere. Without it: a `destructive` route is refused to
    everyone over HTTP (drain through SIGTERM or the manager API instead), and a read-only
    route answers only a direct loopback request carrying no forwarding header — a proxy on
    the same host makes every remote request look local, so any sign of one refuses.
    """
    expected = manager.config.admin_token
    if expected is None:
        if destructive:
            await _error(
                send,
                403,
                "this admin route needs admin_token; without it, drain through the sidecar's "
                "SIGTERM or the manager API",
            )
            return False
        if is_loopback(scope) and not is_forwarded(scope):
            return True
        await _error(
            send,
            403,
            "admin routes are loopback-only while admin_token is not set, and refuse "
            "requests that came through a proxy",
        )
        return False
    token = _bearer(scope)
    if token is None:
        await _error(send, 401, "missing bearer token")
        return False
    if not hmac.compare_digest(token, expected.encode()):
        await _error(send, 403, "invalid bearer token")
        return False
    return True


async def _get_or_head(scope: Scope, send: Send) -> str | None:
    """The request's method when it is GET or HEAD; otherwise the 405 has been sent: None."""
    method: str = scope.get("method", "GET")
    if method in ("GET", "HEAD"):
        return method
    await _error(send, 405, "method not allowed", allow="GET, HEAD")
    return None


async def _admin_read(manager: Stabilizer, scope: Scope, send: Send) -> str | None:
    """The method of a GET/HEAD that ``admin_access`` lets through; None once the 405, 401 or
    403 has been sent."""
    method = await _get_or_head(scope, send)
    if method is None or not await admin_access(manager, scope, send):
        return None
    return method


def warn_unprotected(manager: Stabilizer) -> None:
    """Log that admin routes are served without `admin_token` (called at lifespan startup,
    once logging is configured)."""
    cfg = manager.config
    admin = (cfg.stats_path, cfg.metrics_path, cfg.dashboard_path, cfg.drain_path)
    paths = [path for path in admin if path is not None]
    if cfg.admin_token is not None or not paths:
        return
    logger.warning(
        "Admin routes %s are served without admin_token: they answer only direct loopback "
        "requests, drain is refused over HTTP, and a proxy on this host that adds no forwarding "
        "header makes remote requests look local. Set admin_token, or block these paths at "
        "the proxy.",
        ", ".join(paths),
        extra={"event": ADMIN_UNPROTECTED, "paths": paths},
    )


def _period(scope: Scope) -> float | str | None:
    """The `period` query parameter of a drain: seconds, None if absent, or an error message."""
    query = (scope.get("query_string") or b"").decode("latin-1")
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "period":
            try:
                period = float(value)
            except ValueError:
                period = -1.0
            if not math.isfinite(period) or period < 0 or period > _MAX_PERIOD:
                return f"period must be a number of seconds from 0 to {_MAX_PERIOD:g}"
            return period
    return None


async def _drain_body(receive: Receive) -> None:
    """Read (and ignore) a request body, bounded, so the server is not left mid-request."""
    more = True
    seen = 0
    while more and seen < 65536:
        message = await receive()
        if message.get("type") != "http.request":
            return
        seen += len(message.get("body", b""))
        more = message.get("more_body", False)


def stats_document(manager: Stabilizer, scope: Scope) -> dict[str, Any]:
    """`manager.stats()`, plus the recent history with `?history=1` (the dashboard's first
    poll)."""
    body = manager.stats()
    query = (scope.get("query_string") or b"").decode("latin-1")
    if ("history", "1") in parse_qsl(query):
        body["history"] = manager.history.export()
    return body


def build(manager: Stabilizer) -> dict[str, Handler]:
    cfg = manager.config
    table: dict[str, Handler] = {}

    if cfg.stats_path is not None:

        async def stats(scope: Scope, receive: Receive, send: Send) -> None:
            method = await _admin_read(manager, scope, send)
            if method is not None:
                await respond(
                    send, 200, _json(stats_document(manager, scope)), head=method == "HEAD"
                )

        table[cfg.stats_path] = stats

    if cfg.health_path is not None:

        async def health(scope: Scope, receive: Receive, send: Send) -> None:
            # Public (load balancers, probes): it says whether to route here and nothing else —
            # no counts, versions or config an anonymous caller could learn from.
            method = await _get_or_head(scope, send)
            if method is None:
                return
            if manager.draining:
                await respond(
                    send,
                    503,
                    b'{"status":"draining"}',
                    head=method == "HEAD",
                    headers=[(b"retry-after", str(cfg.retry_after).encode())],
                )
            else:
                # "degraded" (cluster mode: cut off from the cluster, still serving its own
                # sessions) stays 200: a 503 would pull every node out of the load balancer at
                # once during a Redis outage. Why is in the stats and the logs.
                status, _why = manager.health()
                body = b'{"status":"degraded"}' if status == "degraded" else b'{"status":"ok"}'
                await respond(send, 200, body, head=method == "HEAD")

        table[cfg.health_path] = health

    if cfg.drain_path is not None:

        async def drain(scope: Scope, receive: Receive, send: Send) -> None:
            if scope.get("method") != "POST":
                await _error(send, 405, "method not allowed", allow="POST")
                return
            await _drain_body(receive)
            if not await admin_access(manager, scope, send, destructive=True):
                return
            period = _period(scope)
            if isinstance(period, str):
                await _error(send, 400, period)
                return
            report = await manager.drain(period)
            await respond(send, 200, _json(report._asdict()))

        table[cfg.drain_path] = drain

    if cfg.metrics_path is not None:
        table[cfg.metrics_path] = _metrics_route(manager)

    if cfg.dashboard_path is not None:
        table[cfg.dashboard_path] = _dashboard_route(manager)

    if cfg.client_js_path is not None:
        script = resources.files("stabilizer_asgi").joinpath("static/stabilizer-client.js")

        async def client_js(scope: Scope, receive: Receive, send: Send) -> None:
            method = await _get_or_head(scope, send)
            if method is None:
                return
            try:
                body = script.read_bytes()
            except FileNotFoundError:
                await _error(send, 404, "browser client not installed")
                return
            await respond(
                send,
                200,
                body,
                content_type=b"text/javascript; charset=utf-8",
                cache=b"public, max-age=3600",
                head=method == "HEAD",
            )

        table[cfg.client_js_path] = client_js
    return table


def _metrics_route(manager: Stabilizer) -> Handler:
    """The Prometheus exposition; 501 when prometheus-client is not installed."""
    try:
        from ..prometheus import CONTENT_TYPE, PrometheusExporter
    except ImportError:
        exporter = None
        content_type = b""
    else:
        exporter = getattr(manager, "_prometheus", None)
        if exporter is None:
            exporter = manager._prometheus = PrometheusExporter(manager)
        content_type = CONTENT_TYPE.encode()

    async def metrics(scope: Scope, receive: Receive, send: Send) -> None:
        method = await _admin_read(manager, scope, send)
        if method is None:
            return
        if exporter is None:
            await _error(send, 501, "install stabilizer-asgi[metrics] for the Prometheus metrics")
            return
        await respond(
            send, 200, exporter.render(), content_type=content_type, head=method == "HEAD"
        )

    return metrics


# The dashboard is one static file; it talks to nothing but the stats route of its own origin.
_DASHBOARD_CSP = (
    b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    b"connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
    b"frame-ancestors 'none'"
)


def _dashboard_route(manager: Stabilizer) -> Handler:
    """The live dashboard page: static HTML and JS that polls the stats route."""
    page = resources.files("stabilizer_asgi").joinpath("static/dashboard.html")
    stats_path = manager.config.stats_path

    async def dashboard(scope: Scope, receive: Receive, send: Send) -> None:
        method = await _admin_read(manager, scope, send)
        if method is None:
            return
        if stats_path is None:
            await _error(send, 404, "the dashboard needs stats_path")
            return
        url = (scope.get("root_path") or "") + stats_path
        body = page.read_bytes().replace(
            b"__STATS_URL__", json.dumps(url).replace("<", "\\u003c").encode()
        )
        await respond(
            send,
            200,
            body,
            content_type=b"text/html; charset=utf-8",
            headers=[
                (b"content-security-policy", _DASHBOARD_CSP),
                (b"x-content-type-options", b"nosniff"),
                (b"referrer-policy", b"no-referrer"),
            ],
            head=method == "HEAD",
        )

    return dashboard
