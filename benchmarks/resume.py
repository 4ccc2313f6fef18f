"""Resume latency through uvicorn: ``python -m benchmarks.resume``.

One opted-in ``websockets`` client (wire protocol v1, spoken directly so the figure is the
server's) connects, keeps the ``hello``'s session and token, and its TCP connection is then
aborted (no close frame: the server sees 1006 and detaches the session). While it is detached
the server sends the session ``--frames`` (100) data frames, which it must buffer for replay.
The client then reconnects with ``stabilizer_resume=<token>&stabilizer_ack=0`` and the clock
runs from the start of that reconnect until the last of the replayed frames has been read:

- ``to_hello_ms``: reconnect until the ``hello`` saying ``resumed: true``;
- ``to_last_replayed_ms``: reconnect until the last replayed frame (the headline figure);
- ``fresh_connect_ms``: for comparison, a new opted-in connection until its ``hello``.

Every run checks that exactly the frames sent were replayed, in order. Until the server issues
non-empty tokens and answers a resume with ``resumed: true`` the benchmark says "not available"
and why, instead of a number.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import quote

from benchmarks._common import (
    Json,
    benchmark,
    case,
    failed,
    finish_standalone,
    make_parser,
    not_available,
    ok,
    ours_status,
    resolve_profile,
    summarize,
)
from benchmarks._procs import ServerProcess

NAME = "resume"
RS = "\x1e"
PROFILES: dict[str, Json] = {
    "full": {"reps": 20, "frames": 100},
    "quick": {"reps": 5, "frames": 100},
    "tiny": {"reps": 5, "frames": 100},
}


class NotAvailable(Exception):
    """The server does not (yet) do what this benchmark measures."""


async def _connect(url: str) -> Any:
    from websockets.asyncio.client import connect

    return await connect(
        url, compression=None, ping_interval=None, proxy=None, open_timeout=10, close_timeout=1
    )


async def _hello(ws: Any) -> dict[str, Any]:
    first = await asyncio.wait_for(ws.recv(), 10)
    if not isinstance(first, str) or not first.startswith(RS):
        raise NotAvailable(f"the first frame is not a control frame: {first!r:.80}")
    frame: dict[str, Any] = json.loads(first[1:])
    if frame.get("t") != "hello":
        raise NotAvailable(f"the first control frame is {frame.get('t')!r}, not hello")
    return frame


def _wait_detached(server: ServerProcess, session: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = server.get(f"/bench/session?id={quote(session)}")["state"]
        if state == "detached":
            return
        time.sleep(0.005)
    raise NotAvailable(f"an aborted session is {state!r}, not 'detached', after {timeout:g} s")


async def _once(server: ServerProcess, frames: int) -> dict[str, float]:
    url = server.ws_url + "/ws?stabilizer=1"
    t0 = time.perf_counter()
    ws = await _connect(url)
    hello = await _hello(ws)
    fresh = time.perf_counter() - t0
    token, session = hello.get("token"), hello.get("session")
    if not token:
        ws.transport.abort()
        raise NotAvailable("the server's hello carries no reconnect token yet")
    ws.transport.abort()  # a dropped network, not a close: the session must stay resumable
    await asyncio.sleep(0)
    await asyncio.to_thread(_wait_detached, server, str(session))
    reply = await asyncio.to_thread(
        server.post, f"/bench/send?session={quote(str(session))}&count={frames}&prefix=R"
    )
    if reply.get("sent") != frames:
        raise NotAvailable(f"send() to a detached session buffered {reply.get('sent')}/{frames}")
    resume_url = f"{url}&stabilizer_resume={quote(token)}&stabilizer_ack=0"
    t0 = time.perf_counter()
    ws = await _connect(resume_url)
    hello = await _hello(ws)
    t_hello = time.perf_counter() - t0
    if not hello.get("resumed"):
        await ws.close()
        raise NotAvailable(f"a resume was answered resumed:false (reason {hello.get('reason')!r})")
    got = []
    while len(got) < frames:
        msg = await asyncio.wait_for(ws.recv(), 10)
        if isinstance(msg, str) and msg.startswith(RS) and not msg.startswith(RS + RS):
            continue  # control frames (an ack, a ping) are not replayed data
        got.append(msg)
    t_last = time.perf_counter() - t0
    await ws.close()
    expected = [f"R:{i}" for i in range(frames)]
    if got != expected:
        raise RuntimeError(f"replay was not exact: first differences {got[:3]} vs {expected[:3]}")
    return {"fresh": fresh, "hello": t_hello, "last": t_last}


async def _series(server: ServerProcess, frames: int, reps: int) -> list[dict[str, float]]:
    await _once(server, frames)  # warm-up, discarded
    return [await _once(server, frames) for _ in range(reps)]


def run(profile: str = "full", *, reps: int | None = None, frames: int | None = None) -> Json:
    """Measure resume latency, or say why it cannot be measured yet."""
    started = time.perf_counter()
    preset = PROFILES[profile]
    reps = max(5, reps or int(preset["reps"]))
    frames = frames or int(preset["frames"])
    ours_ok, ours_reason = ours_status()
    if not ours_ok:
        result = not_available(ours_reason or "")
    else:
        try:
            with ServerProcess("ours") as server:
                runs = asyncio.run(_series(server, frames, reps))
            result = ok(
                {
                    "to_last_replayed_ms": summarize([r["last"] * 1e3 for r in runs], "ms"),
                    "to_hello_ms": summarize([r["hello"] * 1e3 for r in runs], "ms"),
                    "fresh_connect_ms": summarize([r["fresh"] * 1e3 for r in runs], "ms"),
                },
                replayed_frames=frames,
            )
        except NotAvailable as exc:
            result = not_available(str(exc))
        except Exception as exc:
            result = failed(f"{type(exc).__name__}: {exc}")
    cases = [
        case(f"{frames} frames buffered while detached", {"frames": frames}, {"ours": result}, [])
    ]
    notes = [
        "One client on the loopback, uvicorn defaults; the session is dropped with a TCP abort, "
        f"{frames} frames are sent to it while detached, then it resumes with ack 0.",
        f"{reps} resumes after one discarded warm-up; median [min–max]; every replay is checked "
        "to be exactly the frames sent, in order.",
    ]
    params = {"frames": frames, "reps": reps}
    return benchmark(
        NAME,
        "Resume: reconnect to last replayed frame",
        "to_last_replayed_ms",
        params,
        cases,
        notes,
        started,
    )


def main(argv: list[str] | None = None) -> int:
    parser = make_parser("resume", __doc__)
    parser.add_argument("--frames", type=int, default=None)
    args = parser.parse_args(argv)
    result = run(resolve_profile(args), reps=args.reps, frames=args.frames)
    return finish_standalone(result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
