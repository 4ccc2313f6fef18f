"""The Redis backend against the cluster contract, on a real redis-server, and its faults."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from stabilizer_asgi import ConfigError
from stabilizer_asgi.backends import Publication
from stabilizer_asgi.backends.redis import RedisBackend
from tests.helpers import await_until
from tests.redis_support import Proxy, RedisServer

from .contract import ClusterContract, FakeNode, NewBackend

_names = itertools.count()
# Short periods: a probe (and a presence round) every 125 ms.
PROBE = 0.5


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's client is asyncio-only


class TestRedisBackend(ClusterContract):
    @pytest.fixture
    def new_backend(self, redis_server: RedisServer) -> NewBackend:
        name = f"t{next(_names)}"
        return lambda: RedisBackend(
            redis_server.url, cluster_name=name, probe_interval=PROBE, timeout=2.0
        )


def _backend(url: str, name: str, **kwargs: Any) -> RedisBackend:
    kwargs.setdefault("probe_interval", PROBE)
    kwargs.setdefault("timeout", 1.0)
    return RedisBackend(url, cluster_name=name, **kwargs)


@contextlib.asynccontextmanager
async def started(*backends: RedisBackend) -> AsyncIterator[list[FakeNode]]:
    nodes = [FakeNode(b) for b in backends]
    async with anyio.create_task_group() as tg:
        for node in nodes:
            await tg.start(node.backend.run, node)
        for node in nodes:
            await await_until(
                lambda node=node: (
                    len(node.backend.presence.nodes()) == len(nodes)
                    and node.backend.status().healthy
                ),  # type: ignore[misc]
                what="a healthy cluster",
            )
        try:
            yield nodes
        finally:
            for node in nodes:
                await node.backend.stop(timeout=1.0)
            tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_publications_made_while_redis_is_down_arrive_in_order_after_a_restart(
    redis_server: RedisServer,
) -> None:
    """Redis killed and restarted empty: what a node published meanwhile waits in its outbox
    and reaches the other node once, in order; a restart alone is no gap; health says
    degraded while Redis is away and healthy after."""
    name = f"t{next(_names)}"
    async with started(_backend(redis_server.url, name), _backend(redis_server.url, name)) as (
        a,
        b,
    ):
        for i in range(5):
            a.backend.broker.publish(Publication(f"m{i}"))
        await await_until(lambda: len(b.got) == 5, what="the first five")
        redis_server.kill()
        for i in range(5, 50):
            a.backend.broker.publish(Publication(f"m{i}"))
        await await_until(
            lambda: not a.backend.status().healthy and not b.backend.status().healthy,
            what="both nodes report the outage",
        )
        problem = b.backend.status().problem
        assert problem is not None and ("unreachable" in problem or "subscription" in problem)
        redis_server.start()
        await await_until(lambda: len(b.got) == 50, what="all fifty at b")
        assert b.payloads() == [f"m{i}" for i in range(50)]
        assert b.lost_groups == []
        await await_until(
            lambda: a.backend.status().healthy and b.backend.status().healthy, what="healthy"
        )
        assert b.backend.status().counters["gaps"] == 0


@pytest.mark.anyio
async def test_publications_lost_with_redis_are_a_gap(redis_server: RedisServer) -> None:
    """Publications that were in Redis but not yet read by a node when Redis restarted empty
    are reported to that node as lost (once), and later ones still arrive."""
    name = f"t{next(_names)}"
    async with anyio.create_task_group() as tg:
        proxy = Proxy(redis_server.port)
        await tg.start(proxy.serve)
        # b reads through the proxy, and probes rarely: it stays deaf until Redis dies.
        a_backend = _backend(redis_server.url, name)
        b_backend = _backend(proxy.url, name, probe_interval=30.0)
        async with started(a_backend, b_backend) as (a, b):
            a.backend.broker.publish(Publication("seen"))
            await await_until(lambda: b.payloads() == ["seen"], what="the first one")
            proxy.mute()
            for i in range(5):
                a.backend.broker.publish(Publication(f"lost{i}"))
            await await_until(lambda: a.backend.status().counters["outbox"] == 0, what="sent")
            redis_server.kill()
            redis_server.start()
            await await_until(lambda: b.backend.status().healthy, what="b reconnected")
            await await_until(lambda: a.backend.status().healthy, what="a reconnected")
            a.backend.broker.publish(Publication("after"))
            await await_until(lambda: b.payloads() == ["seen", "after"], what="'after' at b")
            assert b.lost_groups == [None]
            assert b.backend.status().counters["gaps"] == 1
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_outbox_overflow_is_counted_and_a_gap_for_receivers(
    redis_server: RedisServer,
) -> None:
    """While Redis is away the outbox keeps at most `max_outbox_messages`; the rest is
    counted as dropped, and the receivers report the gap when the next publication comes."""
    name = f"t{next(_names)}"
    a_backend = _backend(redis_server.url, name, max_outbox_messages=3)
    async with started(a_backend, _backend(redis_server.url, name)) as (a, b):
        redis_server.kill()
        for i in range(10):
            a.backend.broker.publish(Publication(f"m{i}"))
        assert a.backend.status().counters["outbox_dropped"] >= 7
        redis_server.start()
        await await_until(
            lambda: a.backend.status().counters["outbox"] == 0, what="a's outbox sent"
        )
        a.backend.broker.publish(Publication("after"))
        await await_until(lambda: b.payloads()[-1:] == ["after"], what="'after' at b")
        kept = b.payloads()[:-1]
        assert kept == [f"m{i}" for i in range(len(kept))] and len(kept) <= 3
        assert b.lost_groups == [None]


@pytest.mark.anyio
async def test_a_killed_subscription_is_rebuilt_and_catches_up(
    redis_server: RedisServer,
) -> None:
    """`CLIENT KILL TYPE pubsub` drops every subscription: each node resubscribes, reads what
    was published meanwhile from history, and nothing is lost or repeated."""
    name = f"t{next(_names)}"
    async with started(_backend(redis_server.url, name), _backend(redis_server.url, name)) as (
        a,
        b,
    ):
        await b.backend.broker.subscribe("g")
        for i in range(100):
            a.backend.broker.publish(Publication(f"m{i}", "g" if i % 2 else None))
            if i == 30:
                redis_server.command("CLIENT", "KILL", "TYPE", "pubsub")
            await anyio.sleep(0.001)
        await await_until(lambda: len(b.got) == 100, what="all 100 at b")
        assert b.payloads() == [f"m{i}" for i in range(100)]
        assert b.lost_groups == []
        assert b.backend.status().counters["reconnects"] >= 1


@pytest.mark.anyio
async def test_a_deaf_subscription_is_detected_by_the_probe_and_healed(
    redis_server: RedisServer,
) -> None:
    """A subscription that silently stops receiving (no error at all) is found by the probe,
    reported as degraded, rebuilt within `probe_interval`, and what it missed arrives."""
    name = f"t{next(_names)}"
    async with anyio.create_task_group() as tg:
        proxy = Proxy(redis_server.port)
        await tg.start(proxy.serve)
        b_backend = _backend(redis_server.url, name)
        # Only b's subscription connection goes through the proxy; its writes go direct.
        make_client = b_backend._client
        b_backend._client = lambda *, blocking: (  # type: ignore[method-assign]
            make_client(blocking=blocking)
            if not blocking
            else RedisBackend(proxy.url, cluster_name=name)._client(blocking=True)
        )
        async with started(_backend(redis_server.url, name), b_backend) as (a, b):
            proxy.mute()
            for i in range(20):
                a.backend.broker.publish(Publication(f"m{i}"))
            await await_until(
                lambda: b.backend.status().counters["deaf"] >= 1,
                timeout=PROBE * 5,
                what="the probe finds b deaf",
            )
            await await_until(lambda: len(b.got) == 20, what="all 20 at b")
            assert b.payloads() == [f"m{i}" for i in range(20)]
            await await_until(lambda: b.backend.status().healthy, what="b healthy again")
        tg.cancel_scope.cancel()


def test_a_bad_url_or_cluster_name_is_a_config_error() -> None:
    """The backend refuses a URL that is not Redis's and a cluster name it cannot use."""
    with pytest.raises(ConfigError, match="backend"):
        RedisBackend("http://localhost")
    with pytest.raises(ConfigError, match="cluster_name"):
        RedisBackend("redis://localhost", cluster_name="a b")
