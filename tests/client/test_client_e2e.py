"""The Python client end to end: real uvicorn, a loopback TCP proxy that the tests break."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import pytest

from stabilizer_asgi.client import ClientClosedError, ClientState, ResyncEvent, connect

from ..helpers import await_until
from .support import RECEIVED, SESSIONS, TcpProxy, break_line, make_server_app

pytestmark = pytest.mark.anyio

FAST = {"backoff_base": 0.02, "backoff_cap": 0.1, "ping_interval": 0.25, "ping_timeout": 0.5}
# The client never pings within a test, so only the server's own acks can confirm frames.
SLOW_PINGS = {"backoff_base": 0.02, "backoff_cap": 0.1, "ping_interval": 60.0}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_every_frame_once_in_order_across_cuts_freezes_and_kicks(
    uvicorn_server: Any,
) -> None:
    """Through aborted TCP connections, a black-holed one (found by the client's pings) and
    server-side 1012 closes, every frame arrives exactly once and in order, both ways, on one
    session, with the client's acks keeping the server's small replay buffer from overflowing."""
    server = uvicorn_server(
        make_server_app(heartbeat_interval=5.0, heartbeat_timeout=5.0, replay_buffer_messages=100)
    )
    states: list[ClientState] = []
    resyncs: list[ResyncEvent] = []
    rng = random.Random(7)
    pushed: list[str] = []
    received: list[str] = []
    async with TcpProxy(server.port) as proxy, httpx.AsyncClient() as http:

        async def push(count: int) -> None:
            start = len(pushed) + 1
            url = server.http(f"/push?sid={sid}&start={start}&count={count}")
            results = (await http.post(url)).json()
            assert results == [True] * count
            pushed.extend(f"s{i}" for i in range(start, start + count))

        async with connect(
            proxy.url("/ws?room=1"), on_state=states.append, on_resync=resyncs.append, **FAST
        ) as conn:
            sid = conn.session_id
            assert sid is not None and conn.state is ClientState.OPEN
            sent: list[str] = []
            done = asyncio.Event()

            async def sender() -> None:
                while not done.is_set():  # all through the breaks, so some frames are in flight
                    sent.append(f"c{len(sent) + 1}")
                    await conn.send(sent[-1])
                    if len(sent) % 5 == 0:
                        await asyncio.sleep(0.003)

            async def until_reconnected(before: int) -> None:
                await await_until(
                    lambda: states.count(ClientState.RECONNECTING) > before,
                    5,
                    "the client noticed the drop",
                )
                await await_until(lambda: conn.state is ClientState.OPEN, 5, "the client resumed")

            async def reader() -> None:
                async for message in conn:
                    assert isinstance(message, str)
                    received.append(message)

            sending = asyncio.create_task(sender())
            reading = asyncio.create_task(reader())
            for round_ in range(9):
                await push(40)  # some of it still in flight when the line breaks
                await asyncio.sleep(rng.uniform(0, 0.02))
                before = states.count(ClientState.RECONNECTING)
                await break_line(round_, proxy, http, server.http(f"/kick?sid={sid}"))
                await until_reconnected(before)
            await push(40)
            done.set()
            await asyncio.wait_for(sending, 20)
            await await_until(lambda: len(received) >= len(pushed), 10, "every pushed frame")
            await await_until(lambda: len(RECEIVED[sid]) >= len(sent), 10, "every sent frame")
            assert received == pushed
            assert RECEIVED[sid] == sent
            assert conn.session_id == sid
            assert resyncs == []
            # Nine breaks, each resumed (an extra reconnect under load would be harmless).
            assert states.count(ClientState.RECONNECTING) >= 9
            assert SESSIONS.count((sid, True)) >= 9
            reading.cancel()
    assert conn.state is ClientState.CLOSED


async def test_resync_lists_only_what_the_server_never_confirmed(uvicorn_server: Any) -> None:
    """Messages the app took and answered are acknowledged within a housekeeping tick, so a
    later resync's `unacked` does not list them (the app already has their replies)."""
    # A short timeout makes the tick short (50 ms); the long interval keeps the server's pings,
    # which carry its count too, out of the test.
    first = uvicorn_server(make_server_app(heartbeat_interval=30, heartbeat_timeout=0.4))
    second = uvicorn_server(make_server_app())
    resyncs: list[ResyncEvent] = []
    async with (
        TcpProxy(first.port) as proxy,
        connect(proxy.url("/ws"), on_resync=resyncs.append, **SLOW_PINGS) as conn,
    ):
        old = conn.session_id
        assert old is not None
        for text in ("a", "b", "c"):
            await conn.send(text)
        await await_until(lambda: RECEIVED.get(old) == ["a", "b", "c"], 5, "taken by the app")
        # The server's ack (one tick, 50 ms here) empties the client's resend buffer.
        await await_until(lambda: conn._proto.buffered == 0, 5, "acknowledged")
        proxy.upstream = second.port
        proxy.cut()
        await await_until(lambda: bool(resyncs), 5, "a resync")
        (event,) = resyncs
        assert event.reason == "unknown" and event.unacked == ()


async def test_new_server_means_resync_and_a_fresh_session(uvicorn_server: Any) -> None:
    """When the server cannot resume (a new process knows no session), the client reports a
    ResyncEvent with the reason and carries on with a new session; messages sent while it
    was reconnecting go out on the new one."""
    first = uvicorn_server(make_server_app())
    second = uvicorn_server(make_server_app())
    resyncs: list[ResyncEvent] = []
    async with (
        TcpProxy(first.port) as proxy,
        connect(proxy.url("/ws"), on_resync=resyncs.append, **FAST) as conn,
    ):
        old = conn.session_id
        assert old is not None
        await conn.send("before")
        await await_until(lambda: RECEIVED.get(old) == ["before"], 5, "first frame")
        proxy.upstream = second.port
        proxy.held.clear()
        proxy.cut()
        await await_until(lambda: conn.state is ClientState.RECONNECTING, 5, "reconnecting")
        await conn.send("while reconnecting")  # held, then sent on the new session
        proxy.held.set()
        await await_until(lambda: bool(resyncs), 5, "a resync")
        (event,) = resyncs
        assert event.reason == "unknown"
        assert event.old_session_id == old
        assert event.new_session_id == conn.session_id != old
        assert event.unacked in ((), ("before",))  # unconfirmed frames: the app decides
        await conn.send("after")
        new = conn.session_id
        assert new is not None
        await await_until(
            lambda: RECEIVED.get(new) == ["while reconnecting", "after"], 5, "new session"
        )


async def test_drain_hint_moves_the_client_to_another_server(uvicorn_server: Any) -> None:
    """A draining server's reconnect hint + 1012 makes the client reconnect (here to another
    instance behind the same address, so it resyncs), not give up."""
    first = uvicorn_server(make_server_app())
    second = uvicorn_server(make_server_app())
    resyncs: list[ResyncEvent] = []
    async with (
        TcpProxy(first.port) as proxy,
        httpx.AsyncClient() as http,
        connect(proxy.url("/ws"), on_resync=resyncs.append, **FAST) as conn,
    ):
        proxy.upstream = second.port
        report = (await http.post(first.http("/drain?period=0.2"))).json()
        assert report["closed"] == 1
        await await_until(lambda: bool(resyncs), 5, "a resync on the second server")
        assert conn.state is ClientState.OPEN
        await conn.send("hi")
        new = conn.session_id
        assert new is not None
        await await_until(lambda: RECEIVED.get(new) == ["hi"], 5, "a frame on the new server")


async def test_server_normal_close_ends_the_client(uvicorn_server: Any) -> None:
    """A deliberate close from the server (1000) is final: iteration ends, send raises."""
    server = uvicorn_server(make_server_app())
    async with httpx.AsyncClient() as http, connect(server.url("/ws"), **FAST) as conn:
        await http.post(server.http(f"/kick?sid={conn.session_id}&code=1000"))
        assert [m async for m in conn] == []
        assert conn.state is ClientState.CLOSED
        with pytest.raises(ClientClosedError) as info:
            await conn.send("late")
        assert info.value.code == 1000


async def test_unreachable_server_gives_up_after_max_attempts() -> None:
    """With max_attempts, a server that never answers ends in ClientClosedError, not a hang."""
    async with TcpProxy(upstream=1) as proxy:  # nothing listens on port 1
        with pytest.raises(ClientClosedError) as info:
            async with connect(proxy.url("/ws"), max_attempts=3, **FAST):
                pass
    assert "gave up after 3 attempts" in info.value.reason


async def test_send_waits_when_the_buffer_is_full_while_reconnecting(uvicorn_server: Any) -> None:
    """While reconnecting, max_pending messages are held; the next send waits until the
    session is back, and then everything arrives once, in order."""
    server = uvicorn_server(make_server_app())
    async with (
        TcpProxy(server.port) as proxy,
        connect(proxy.url("/ws"), max_pending=5, **FAST) as conn,
    ):
        sid = conn.session_id
        assert sid is not None
        proxy.held.clear()
        proxy.cut()
        await await_until(lambda: conn.state is ClientState.RECONNECTING, 5, "reconnecting")
        for i in range(5):
            await asyncio.wait_for(conn.send(f"m{i}"), 5)  # held without waiting
        sixth = asyncio.create_task(conn.send("m5"))
        done, _ = await asyncio.wait([sixth], timeout=0.3)
        assert not done  # backpressure: no room until the server confirms
        proxy.held.set()
        await asyncio.wait_for(sixth, 5)
        await await_until(lambda: len(RECEIVED[sid]) == 6, 5, "six frames")
        assert RECEIVED[sid] == [f"m{i}" for i in range(6)]


async def test_slow_reader_is_not_taken_for_dead(uvicorn_server: Any) -> None:
    """When the app stops reading (inbox full), the client stops reading the socket but keeps
    telling the server it is alive, so a short server heartbeat does not cut it off."""
    server = uvicorn_server(make_server_app(heartbeat_interval=0.1, heartbeat_timeout=0.1))
    states: list[ClientState] = []
    async with httpx.AsyncClient() as http:
        async with connect(server.url("/ws"), max_queue=2, on_state=states.append, **FAST) as conn:
            url = server.http(f"/push?sid={conn.session_id}&start=1&count=50")
            assert (await http.post(url)).json() == [True] * 50
            await asyncio.sleep(1.0)  # many server heartbeat periods without reading
            got = [await asyncio.wait_for(conn.recv(), 5) for _ in range(50)]
            assert got == [f"s{i}" for i in range(1, 51)]
        stats = (await http.get(server.http("/_stabilizer/stats"))).json()
    assert ClientState.RECONNECTING not in states
    assert stats["heartbeat"]["timeouts"] == 0
