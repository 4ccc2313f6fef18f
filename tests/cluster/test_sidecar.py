"""The sidecar in cluster mode: a Redis backend needs a shared secret; memory-backed workers
share one generated secret."""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect

from stabilizer_asgi import cli
from tests.helpers import WAIT, await_until, control
from tests.ops.test_cli import APP, Sidecar, no_serving, parse, sidecars  # noqa: F401
from tests.redis_support import RedisServer

from .support import Client


def test_a_redis_backend_without_secret_exits_2(
    capsys: pytest.CaptureFixture[str],
    no_serving: None,  # noqa: F811 - the fixture
) -> None:
    """`--backend redis://…` without `--secret` exits with status 2 naming the secret: a
    generated one could not be shared with the other machines."""
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", APP, "--factory", "--backend", "redis://127.0.0.1:1/0"], environ={})
    assert exited.value.code == 2
    assert "secret" in capsys.readouterr().err


def test_memory_workers_get_one_generated_secret() -> None:
    """With several workers, the memory backend and no secret, one secret is generated for
    all of them; one worker, a Redis backend or a given secret are left alone."""
    several = parse(APP, "--workers", "2")
    cli.share_secret(several)
    assert isinstance(several.config.get("secret"), str) and len(several.config["secret"]) > 30
    for args in (
        [APP],
        [APP, "--workers", "2", "--secret", "mine"],
        [APP, "--workers", "2", "--backend", "redis://127.0.0.1:1/0"],
    ):
        settings = parse(*args)
        before = settings.config.get("secret")
        cli.share_secret(settings)
        assert settings.config.get("secret") == before


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_token_shown_to_another_worker_is_unknown_not_invalid(
    sidecars: list[Sidecar],  # noqa: F811 - the fixture
    anyio_backend: str,
) -> None:
    """Under `--workers 2` without --secret, a resume that lands on the worker that does not
    hold the session is answered "unknown" (the token verifies), never "invalid"."""
    sidecar = Sidecar(APP, "--factory", "--workers", "2")
    sidecars.append(sidecar)
    for _ in range(1000):
        ready = [x for x in sidecar.lines if x["message"] == "Application startup complete."]
        if len(ready) == 2:
            break
        await anyio.sleep(0.02)
    reasons = []
    for _ in range(12):
        ws = await connect(sidecar.url("/echo?stabilizer=1"), ping_interval=None)
        hello = control(await ws.recv())
        assert hello is not None
        ws.transport.abort()  # dropped, not closed: the session stays resumable
        await anyio.sleep(0.05)
        url = f"/echo?stabilizer=1&stabilizer_resume={hello['token']}&stabilizer_ack=0"
        async with connect(sidecar.url(url), ping_interval=None) as ws:
            again = control(await ws.recv())
            assert again is not None
            reasons.append(again.get("reason"))
    assert set(reasons) <= {None, "unknown"}, json.dumps(reasons)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_workers_on_redis_reach_every_client(
    sidecars: list[Sidecar],  # noqa: F811 - the fixture
    redis_server: RedisServer,
    anyio_backend: str,
) -> None:
    """`serve --workers 2` on Redis: both workers are nodes of one cluster, and a broadcast
    made on whichever worker answers the HTTP request reaches every client of both, in order."""
    env = {"STABILIZER_TEST_BACKEND": redis_server.url, "STABILIZER_TEST_CLUSTER": "sidecar"}
    sidecar = Sidecar("tests.cluster.app:app", "--workers", "2", env=env)
    sidecars.append(sidecar)

    def cluster_view() -> Any:
        try:
            reply = httpx.get(sidecar.http("/_stabilizer/stats"), timeout=WAIT)
        except httpx.HTTPError:  # a worker still starting
            return {"nodes": [], "connections": -1}
        return reply.json()["cluster"]

    await await_until(lambda: len(cluster_view()["nodes"]) == 2, timeout=WAIT * 4, what="two nodes")
    async with anyio.create_task_group() as tg:
        # Until the kernel has handed connections to both workers (it picks, not us; a worker
        # that has just accepted is often picked again). Each round stalls whichever worker
        # answers `/stall`, so the handshakes made meanwhile go to the other one.
        clients: list[Client] = []
        while len(clients) < 100:
            async with httpx.AsyncClient(timeout=WAIT) as http, anyio.create_task_group() as rnd:
                rnd.start_soon(http.get, sidecar.http("/stall?seconds=0.4"))
                await anyio.sleep(0.1)
                for _ in range(4):
                    clients.append(Client(sidecar.url("/ws")))
                    rnd.start_soon(tg.start, clients[-1].run)
                    await anyio.sleep(0.02)
            await await_until(
                lambda: cluster_view()["connections"] == len(clients), what="the connections"
            )
            if all(node["connections"] > 0 for node in cluster_view()["nodes"]):
                break
        assert all(node["connections"] > 0 for node in cluster_view()["nodes"])
        async with httpx.AsyncClient(timeout=WAIT) as http:
            for i in range(10):
                reply = await http.post(sidecar.http(f"/broadcast?text=m{i}"))
                assert reply.status_code == 200
        expected = [f"m{i}" for i in range(10)]
        await await_until(lambda: all(len(c.frames) >= 10 for c in clients), what="all frames")
        assert all(c.frames == expected for c in clients)
        tg.cancel_scope.cancel()
