"""The test suite's round-robin TCP load balancer (benchmarks/_lb.py) against plain TCP servers."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from benchmarks._lb import LoadBalancer, peak_rate
from tests.redis_support import free_port


class _Hello(socketserver.BaseRequestHandler):
    """Says which server it is, then echoes until the client leaves."""

    def handle(self) -> None:
        self.request.sendall(self.server.name)  # type: ignore[attr-defined]
        with contextlib.suppress(OSError):
            while data := self.request.recv(4096):
                self.request.sendall(data)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextlib.contextmanager
def servers(n: int) -> Iterator[list[_Server]]:
    started = []
    for k in range(n):
        server = _Server(("127.0.0.1", 0), _Hello)
        server.name = f"s{k}".encode()  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
    try:
        yield started
    finally:
        for server in started:
            server.shutdown()
            server.server_close()


def which(port: int) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    return sock, sock.recv(2)


def test_round_robin_skips_down_and_refused_backends_and_abort_resets() -> None:
    """Connections go to each live backend in turn; a backend marked down, or refusing
    connections, is skipped; `abort` resets that backend's forwarded connections (the client
    reads ECONNRESET) and leaves the others; every accepted connection is counted per backend
    and is no longer open once both of its ends have closed."""
    dead = free_port()  # nothing listens there: connection refused
    with (
        servers(2) as (s0, s1),
        LoadBalancer([s0.server_address[1], dead, s1.server_address[1]]) as lb,
    ):
        opened = [which(lb.port) for _ in range(4)]
        assert [name for _, name in opened] == [b"s0", b"s1", b"s0", b"s1"]
        sock, _ = opened[0]
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"  # bytes flow both ways

        lb.down(0)
        more = [which(lb.port) for _ in range(2)]
        assert [name for _, name in more] == [b"s1", b"s1"]
        lb.up(0)

        assert lb.abort(0) == 2
        for sock, name in opened:
            if name == b"s0":
                with pytest.raises(ConnectionResetError):
                    sock.recv(1)
            else:
                sock.sendall(b"x")
                assert sock.recv(1) == b"x"
        assert len(lb.accepted(0)) == 2 and len(lb.accepted(1)) == 0
        assert len(lb.accepted(2)) == 4
        assert lb.refused == 0
        assert lb.open_connections(0) == 0 and lb.open_connections(2) == 4
        for sock, _ in opened + more:
            sock.close()  # a connection ends once both sides have closed
        deadline = time.monotonic() + 5
        while lb.open_connections(2) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert lb.open_connections(2) == 0


def test_no_live_backend_resets_the_client_and_peak_rate_counts_a_window() -> None:
    """With every backend refusing, the client's connection is reset and counted as refused;
    `peak_rate` is the most events in any sliding window."""
    with LoadBalancer([free_port()]) as lb:
        sock = socket.create_connection(("127.0.0.1", lb.port), timeout=5)
        with pytest.raises(ConnectionResetError):  # not an orderly close (b"")
            sock.recv(1)
        deadline = time.monotonic() + 5
        while lb.refused != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert lb.refused == 1
    assert peak_rate([0.0, 0.1, 0.2, 1.5, 1.6], window=1.0) == 3.0
    assert peak_rate([], window=0.5) == 0.0
