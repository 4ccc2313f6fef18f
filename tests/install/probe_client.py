"""Run inside a fresh venv holding the wheel with [server,client] (`check_install.py`): one
message round-trips through `stabilizer-asgi serve` with the package's own client, leaving the
`async with` block right after `recv()` (the documented example) closes promptly, and the server
ends the session. Usage: probe_client.py PORT ADMIN_TOKEN. Prints one JSON line."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.request
from typing import Any

from stabilizer_asgi.client import ClientState, connect

CLOSE_BOUND = 5.0
"""Seconds: a generous hang detector (the bug it guards against took ping_interval +
ping_timeout = 30 s), not a performance target."""


def sessions(port: int, token: str) -> dict[str, int]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/_stabilizer/stats",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        stats: dict[str, Any] = json.load(response)
    return dict(stats["sessions"])


async def main(port: int, token: str) -> dict[str, Any]:
    async with connect(f"ws://127.0.0.1:{port}/ws") as conn:
        during = await asyncio.to_thread(sessions, port, token)
        await conn.send("hello from the clean install")
        echoed = await conn.recv()
        started = time.monotonic()
    close_s = time.monotonic() - started
    assert echoed == "hello from the clean install", echoed
    assert during["connected"] == 1, during
    assert conn.state is ClientState.CLOSED, conn.state
    assert close_s < CLOSE_BOUND, f"close() took {close_s:.1f}s"
    deadline = time.monotonic() + CLOSE_BOUND
    while True:
        after = await asyncio.to_thread(sessions, port, token)
        if after["connected"] == 0 and after["detached"] == 0:
            break
        assert time.monotonic() < deadline, f"the server kept the session: {after}"
        await asyncio.sleep(0.02)
    return {"close_s": round(close_s, 4), "during": during, "after": after}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(int(sys.argv[1]), sys.argv[2]))))
