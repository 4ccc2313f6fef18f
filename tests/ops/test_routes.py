"""The middleware's own routes (stats, health, drain) through TestClient and real uvicorn."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from stabilizer_asgi.asgi import routes

from .support import LOOPBACK, REMOTE, AppCalls, captured_logs, control, stabilized

STATS = "/_stabilizer/stats"
HEALTH = "/_stabilizer/health"
DRAIN = "/_stabilizer/drain"
TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

ClientFactory = Callable[..., TestClient]


def assert_json_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """A JSON error body with the expected status, never a 500."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    return body


# ---------------------------------------------------------------------- health


def test_health_answers_200_and_nothing_more(client_factory: ClientFactory) -> None:
    """GET health is 200 with only a status (it is public), HEAD is 200 with an empty body."""
    calls = AppCalls()
    with client_factory(stabilized(calls), client=REMOTE) as client:
        response = client.get(HEALTH)
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}
        assert response.headers["cache-control"] == "no-store"
        head = client.head(HEALTH)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == response.headers["content-length"]
    assert calls.paths == []


def test_health_answers_503_while_draining(client_factory: ClientFactory) -> None:
    """After a drain, health is 503 with Retry-After, and handshakes get 503 too."""
    app = stabilized(retry_after=7, admin_token=TOKEN)
    with client_factory(app, client=LOOPBACK) as client:
        assert client.post(DRAIN + "?period=0", headers=AUTH).status_code == 200
        response = client.get(HEALTH)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "7"
        assert response.json()["status"] == "draining"
        assert client.head(HEALTH).status_code == 503
        with pytest.raises(WebSocketDenialResponse) as denied, client.websocket_connect("/echo"):
            pass  # pragma: no cover - the handshake is refused
        assert denied.value.status_code == 503
        assert denied.value.headers["retry-after"] == "7"


# ---------------------------------------------------------------------- stats


def test_stats_document_has_every_section(client_factory: ClientFactory) -> None:
    """Stats reports connections, sessions by state, shards, frames, bytes, heartbeat,
    rejections, broadcasts, memory, limits, uptime and the config without secrets."""
    app = stabilized(num_shards=4, secret="k" * 32, admin_token=TOKEN, max_connections=1)
    with client_factory(app, client=REMOTE) as client, client.websocket_connect("/echo") as ws:
        ws.send_text("hello")
        assert ws.receive_text() == "hello"
        with pytest.raises(WebSocketDenialResponse), client.websocket_connect("/echo"):
            pass  # pragma: no cover
        response = client.get(STATS, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    stats = response.json()
    assert stats["connections"] == 1
    assert stats["sessions"]["connected"] == 1
    assert set(stats["sessions"]) >= {"connected", "detached", "closed"}
    assert len(stats["shards"]) == 4 and sum(stats["shards"]) == 1
    assert stats["frames"] == {"in": 1, "out": 1}
    assert stats["bytes"] == {"in": 5, "out": 5}
    assert set(stats["heartbeat"]) == {
        "scheduled",
        "pings",
        "timeouts",
        "rtt_p50",
        "rtt_p90",
        "rtt_p99",
        "rtt",
    }
    assert stats["rejections"] == {"capacity": 1, "per_ip": 0, "draining": 0, "duplicate_client": 0}
    assert stats["broadcasts"] == 0
    assert stats["memory"]["limit"] is None and stats["memory"]["total"] >= 0
    # TestClient is no uvicorn: the server's own message limit is not known
    assert stats["limits"] == {
        "max_message_size": 1048576,
        "server_ws_max_size": None,
        "server_limit_above_ours": None,
    }
    assert stats["uptime"] >= 0
    config = stats["config"]
    assert config["num_shards"] == 4
    assert config["secret"] == "<set>" and config["admin_token"] == "<set>"
    assert TOKEN not in response.text and "k" * 32 not in response.text


def test_stats_is_loopback_only_without_admin_token(client_factory: ClientFactory) -> None:
    """Without admin_token, a loopback client gets stats and any other client 403."""
    with client_factory(stabilized(), client=LOOPBACK) as client:
        assert client.get(STATS).status_code == 200
    with client_factory(stabilized(), client=REMOTE) as client:
        body = assert_json_error(client.get(STATS), 403)
        assert "loopback" in body["error"]
        assert_json_error(client.get(STATS, headers={"Authorization": "Bearer x"}), 403)


@pytest.mark.parametrize(
    "header",
    [
        ("X-Forwarded-For", "127.0.0.1"),
        ("X-Forwarded-Host", "example.com"),
        ("X-Forwarded-Proto", "https"),
        ("X-Real-IP", "127.0.0.1"),
        ("Forwarded", "for=127.0.0.1"),
        ("Via", "1.1 nginx"),
    ],
)
def test_stats_without_token_refuses_proxied_loopback_requests(
    client_factory: ClientFactory, header: tuple[str, str]
) -> None:
    """Without admin_token, a loopback request carrying any forwarding header gets 403."""
    with client_factory(stabilized(), client=LOOPBACK) as client:
        body = assert_json_error(client.get(STATS, headers=dict([header])), 403)
        assert "proxy" in body["error"]


def test_drain_is_refused_over_http_without_admin_token(client_factory: ClientFactory) -> None:
    """Without admin_token, POST drain is 403 even from loopback; the manager API still drains."""
    app = stabilized()
    with client_factory(app, client=LOOPBACK) as client:
        body = assert_json_error(client.post(DRAIN + "?period=0"), 403)
        assert "admin_token" in body["error"]
        assert client.get(HEALTH).status_code == 200
        assert not app.manager.draining
        client.portal.call(app.manager.drain, 0)
        assert client.get(HEALTH).status_code == 503


def test_admin_routes_without_token_log_a_startup_warning(client_factory: ClientFactory) -> None:
    """Serving stats, metrics, the dashboard or drain without admin_token logs a WARNING
    sentence at startup; with a token, or with every admin route disabled, nothing."""
    with captured_logs() as logs:
        for app in (
            stabilized(),
            stabilized(admin_token=TOKEN),
            stabilized(stats_path=None, drain_path=None, metrics_path=None, dashboard_path=None),
        ):
            with client_factory(app) as client:
                assert client.get(HEALTH).status_code == 200
    records = [r for r in logs.records if getattr(r, "event", None) == routes.ADMIN_UNPROTECTED]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    message = records[0].getMessage()
    assert message.startswith(
        "Admin routes /_stabilizer/stats, /_stabilizer/metrics, /_stabilizer/, "
        "/_stabilizer/drain are served"
    )
    assert "admin_token" in message and message.endswith(".")


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        ("Bearer", 401),
        ("Bearer ", 401),
        ("Basic dXNlcjpwYXNz", 401),
        ("Bearer wrong-token", 403),
        (f"Bearer {TOKEN}x", 403),
        (f"bearer {TOKEN}", 200),
        (f"Bearer {TOKEN}", 200),
    ],
)
def test_stats_with_admin_token_checks_the_bearer(
    client_factory: ClientFactory, authorization: str | None, status: int
) -> None:
    """With admin_token, a missing bearer is 401, a wrong one 403, even from loopback."""
    headers = {"Authorization": authorization} if authorization is not None else {}
    with client_factory(stabilized(admin_token=TOKEN), client=LOOPBACK) as client:
        response = client.get(STATS, headers=headers)
    if status == 200:
        assert response.status_code == 200 and "connections" in response.json()
    else:
        body = assert_json_error(response, status)
        assert TOKEN not in response.text
        if status == 401:
            assert response.headers["www-authenticate"] == "Bearer"
            assert body["error"] == "missing bearer token"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_stats_and_health_refuse_other_methods(client_factory: ClientFactory, method: str) -> None:
    """Stats and health answer GET and HEAD only: anything else is 405 with Allow."""
    calls = AppCalls()
    with client_factory(stabilized(calls), client=LOOPBACK) as client:
        for path in (STATS, HEALTH):
            response = client.request(method, path)
            assert_json_error(response, 405)
            assert response.headers["allow"] == "GET, HEAD"
    assert calls.paths == []


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE"])
def test_drain_accepts_post_only(client_factory: ClientFactory, method: str) -> None:
    """Drain is POST only; other methods get 405 and do not start a drain."""
    app = stabilized()
    with client_factory(app, client=LOOPBACK) as client:
        response = client.request(method, DRAIN)
        assert response.status_code == 405
        assert response.headers["allow"] == "POST"
        if method != "HEAD":
            assert_json_error(response, 405)
        assert client.get(HEALTH).status_code == 200
        assert not app.manager.draining


def test_drain_needs_admin_access(client_factory: ClientFactory) -> None:
    """Drain from a non-loopback client without a token is 403; with a token 401/403/200."""
    app = stabilized()
    with client_factory(app, client=REMOTE) as client:
        assert_json_error(client.post(DRAIN), 403)
        assert not app.manager.draining
    app = stabilized(admin_token=TOKEN)
    with client_factory(app, client=REMOTE) as client:
        assert_json_error(client.post(DRAIN, content=b"x" * 100_000), 401)
        assert_json_error(client.post(DRAIN, headers={"Authorization": "Bearer no"}), 403)
        assert not app.manager.draining
        response = client.post(DRAIN + "?period=0", headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200
        assert app.manager.draining


def test_drain_route_returns_the_report(client_factory: ClientFactory) -> None:
    """POST drain closes every websocket with 1012 and answers the report with exact counts."""
    app = stabilized(admin_token=TOKEN)
    with (
        client_factory(app, client=LOOPBACK) as client,
        client.websocket_connect("/echo?stabilizer=1") as opted,
        client.websocket_connect("/echo") as plain,
    ):
        hello = control(opted.receive_text())
        assert hello is not None and hello["t"] == "hello"
        plain.send_text("x")
        assert plain.receive_text() == "x"
        response = client.post(DRAIN + "?period=0.05", headers=AUTH)
        assert response.status_code == 200
        report = response.json()
        assert report["closed"] == 2 and report["failed"] == 0
        assert 0 <= report["duration"] < 5
        hint = control(opted.receive_text())
        assert hint == {"t": "reconnect", "after_ms": hint["after_ms"], "reason": "draining"}
        assert 0 <= hint["after_ms"] <= 50
        for ws in (opted, plain):
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_text()
            assert closed.value.code == 1012


@pytest.mark.parametrize(
    "query",
    ["period=abc", "period=-1", "period=nan", "period=inf", "period=1e9", "period=", "period=%ff"],
)
def test_drain_rejects_a_bad_period(client_factory: ClientFactory, query: str) -> None:
    """A bad `period` query parameter is 400 with a JSON error, and no drain starts."""
    app = stabilized(admin_token=TOKEN)
    with client_factory(app, client=LOOPBACK) as client:
        body = assert_json_error(client.post(f"{DRAIN}?{query}", headers=AUTH), 400)
        assert "period" in body["error"]
        assert not app.manager.draining


@pytest.mark.parametrize("query", ["x=1", "%zz=%%", "&&&", "a=%00&b", "period", "q=" + "x" * 5000])
def test_query_junk_is_ignored_by_stats_and_health(
    client_factory: ClientFactory, query: str
) -> None:
    """Unknown or malformed query parameters do not change stats or health answers."""
    with client_factory(stabilized(), client=LOOPBACK) as client:
        assert client.get(f"{STATS}?{query}").status_code == 200
        assert client.get(f"{HEALTH}?{query}").status_code == 200


def test_routes_never_reach_the_app_and_can_be_disabled(client_factory: ClientFactory) -> None:
    """The routes are answered by the middleware; a route set to None goes to the app."""
    calls = AppCalls()
    with client_factory(stabilized(calls, stats_path=None), client=LOOPBACK) as client:
        assert client.get(HEALTH).json()["status"] == "ok"
        assert client.get(STATS).text == "app"
        assert client.get(HEALTH + "/").text == "app"
    assert calls.paths == [STATS, HEALTH + "/"]


def test_routes_honour_root_path(client_factory: ClientFactory) -> None:
    """Mounted under a root_path, the routes answer at root_path + path."""
    with client_factory(stabilized(), client=LOOPBACK, root_path="/api") as client:
        assert client.get("/api" + HEALTH).json()["status"] == "ok"


# ---------------------------------------------------------------------- through real uvicorn


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_routes_through_uvicorn(uvicorn_server: Any, anyio_backend: str) -> None:
    """Over real HTTP: auth statuses, 405, HEAD, the drain report, 503 health and handshakes."""
    app = stabilized(admin_token=TOKEN, retry_after=3)
    server = uvicorn_server(app)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient() as http, connect(server.url("/echo?stabilizer=1")) as ws:
        hello = control(await ws.recv())
        assert hello is not None and hello["t"] == "hello"
        assert_json_error(await http.get(server.http(STATS)), 401)
        assert_json_error(
            await http.get(server.http(STATS), headers={"Authorization": "Bearer x"}), 403
        )
        stats = await http.get(server.http(STATS), headers=auth)
        assert stats.status_code == 200 and stats.json()["sessions"]["connected"] == 1
        head = await http.head(server.http(STATS), headers=auth)
        assert head.status_code == 200 and head.content == b""
        assert_json_error(await http.put(server.http(STATS), headers=auth), 405)
        assert_json_error(await http.get(server.http(DRAIN), headers=auth), 405)
        assert (await http.get(server.http(HEALTH))).status_code == 200
        drained = await http.post(server.http(DRAIN + "?period=0"), headers=auth)
        assert drained.status_code == 200
        assert drained.json()["closed"] == 1 and drained.json()["failed"] == 0
        health = await http.get(server.http(HEALTH + "?junk=%zz"))
        assert health.status_code == 503 and health.headers["retry-after"] == "3"
    with pytest.raises(InvalidStatus) as denied:
        async with connect(server.url("/echo")):
            pass  # pragma: no cover
    assert denied.value.response.status_code == 503
    assert denied.value.response.headers["retry-after"] == "3"


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_forwarded_client_is_not_loopback(uvicorn_server: Any, anyio_backend: str) -> None:
    """Behind a trusted proxy the forwarded client address decides: a remote one gets 403."""
    server = uvicorn_server(stabilized(), forwarded_allow_ips="127.0.0.1")
    async with httpx.AsyncClient() as http:
        assert (await http.get(server.http(STATS))).status_code == 200
        forwarded = {"X-Forwarded-For": "198.51.100.9"}
        assert_json_error(await http.get(server.http(STATS), headers=forwarded), 403)
        assert_json_error(await http.post(server.http(DRAIN), headers=forwarded), 403)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_no_token_admin_routes_fail_closed_through_uvicorn(
    uvicorn_server: Any, anyio_backend: str
) -> None:
    """Through uvicorn without admin_token: a local proxy's request (no X-Forwarded-For, only
    proxy-ish headers) gets 403 for stats, drain is 403 for everyone, and the service stays up."""
    app = stabilized()
    server = uvicorn_server(app)
    proxied = {"Host": "example.com", "X-Real-IP": "198.51.100.9", "X-Forwarded-Proto": "https"}
    async with httpx.AsyncClient() as http:
        assert (await http.get(server.http(STATS))).status_code == 200
        assert_json_error(await http.get(server.http(STATS), headers=proxied), 403)
        assert_json_error(await http.post(server.http(DRAIN + "?period=0"), headers=proxied), 403)
        assert_json_error(await http.post(server.http(DRAIN + "?period=0")), 403)
        health = await http.get(server.http(HEALTH))
        assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert not app.manager.draining
    async with connect(server.url("/echo")) as ws:
        await ws.send("still up")
        assert await ws.recv() == "still up"


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_spoofed_forwarded_for_is_not_believed_with_any_proxy_trusted(
    uvicorn_server: Any, anyio_backend: str
) -> None:
    """With forwarded_allow_ips='*', `X-Forwarded-For: 127.0.0.1` from anyone gets 403 without
    a token; with admin_token the bearer decides, whatever the forwarded address."""
    server = uvicorn_server(stabilized(), forwarded_allow_ips="*")
    spoofed = {"X-Forwarded-For": "127.0.0.1"}
    async with httpx.AsyncClient() as http:
        assert_json_error(await http.get(server.http(STATS), headers=spoofed), 403)
        assert_json_error(await http.post(server.http(DRAIN + "?period=0"), headers=spoofed), 403)
    server = uvicorn_server(stabilized(admin_token=TOKEN), forwarded_allow_ips="*")
    remote = {"X-Forwarded-For": "198.51.100.9"}
    async with httpx.AsyncClient() as http:
        assert_json_error(await http.get(server.http(STATS), headers=spoofed), 401)
        stats = await http.get(server.http(STATS), headers={**remote, **AUTH})
        assert stats.status_code == 200 and "connections" in stats.json()
