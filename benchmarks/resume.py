"""Resume latency, same node and another node: ``python -m benchmarks.resume``.

One opted-in ``websockets`` client (wire protocol v1, spoken directly so the figure is the
server's, not a client library's) connects to a node and keeps the ``hello``'s session and
token. The node sends it ``--before`` (5) frames, which it reads: its ack is then 5. Its TCP
connection is aborted (no close frame: the server sees 1006 and detaches the session), and the
node that held it sends the detached session ``--frames`` (100) data frames through
``Stabilizer.send`` (an HTTP route), which it must keep for replay. The client then reconnects
with ``stabilizer_resume=<token>&stabilizer_ack=5`` and the clock runs from the start of that
reconnect until the last of the replayed frames has been read.

Variants (one resume each per round, in rotating order, so that the machine's load hits all):

- ``memory_same``: one node, in-memory backend (the single-process figure);
- ``redis_same``: two nodes on one real redis-server (``backend="redis://…"``, shared secret),
  the client resumes on the node that held its session;
- ``redis_cross``: the same two nodes, the client resumes on the *other* node, which must take
  the session over from the first (DESIGN "Resume anywhere"). Rounds alternate which node
  holds the session.

Figures per variant: ``to_last_replayed_ms`` (median [min–max]) and its p90 (the headline),
``to_hello_ms`` (reconnect until the ``hello`` saying ``resumed: true``: on another node, this
is where the hand-over happens), ``hello_to_last_ms`` (that ``hello`` until the last replayed
frame: the replay itself), ``fresh_connect_ms`` (a new opted-in connection until its
``hello``, for comparison), ``resyncs`` (resumes not answered ``resumed: true``: a
``resumed: false`` hello, or none at all) and ``inexact`` (resumes whose replay was not frames
1…100, each exactly once, in order, and nothing after them). Every repetition is checked; a
resync or an inexact replay is counted and described, never hidden. A variant whose every
resume resyncs says so ("resumed: false, reason …") instead of giving a number.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from benchmarks._common import (
    MIN_REPS,
    Json,
    benchmark,
    case,
    failed,
    finish_standalone,
    make_parser,
    not_available,
    ok,
    ours_status,
    ratio,
    resolve_profile,
    selected,
    summarize,
)
from benchmarks._procs import RedisServer, ServerProcess, load_average

NAME = "resume"
RS = "\x1e"
VARIANTS = ("memory_same", "redis_same", "redis_cross")
CLUSTER_NAME = "bench-resume"
PROFILES: dict[str, Json] = {
    "full": {"reps": 100, "frames": 100, "before": 5},
    "quick": {"reps": 20, "frames": 100, "before": 5},
    "tiny": {"reps": 5, "frames": 100, "before": 5},
}
FRAME_TIMEOUT = 10.0  # seconds without the next replayed frame before a replay counts as short
LINGER = 0.05  # seconds a client keeps reading after the last expected frame, for extras


class NotAvailable(Exception):
    """The server does not (yet) do what this benchmark measures."""


@dataclass
class Outcome:
    """One resume: its times (seconds) if it resumed, or why not; and what was replayed."""

    fresh: float
    resumed: bool
    reason: str | None = None
    hello: float | None = None
    last: float | None = None  # None: fewer frames than expected arrived
    problem: str | None = None  # what was wrong with the replay, None if exact


@dataclass
class Tally:
    """Every resume of one variant (the warm-up's is kept apart)."""

    outcomes: list[Outcome] = field(default_factory=list)
    warmup: Outcome | None = None


# --- one resume ----------------------------------------------------------------------------------


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


async def _data(ws: Any, timeout: float) -> Any:
    """The next data frame (control frames such as an ack or a ping are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        msg = await asyncio.wait_for(ws.recv(), max(0.0, deadline - time.monotonic()))
        if isinstance(msg, str) and msg.startswith(RS):
            if msg.startswith(RS + RS):
                return msg[1:]  # an escaped data frame
            continue
        return msg


def _wait_detached(server: ServerProcess, session: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = server.get(f"/bench/session?id={quote(session)}")["state"]
        if state == "detached":
            return
        time.sleep(0.005)
    raise NotAvailable(f"an aborted session is {state!r}, not 'detached', after {timeout:g} s")


async def _send(server: ServerProcess, session: str, prefix: str, count: int) -> None:
    reply = await asyncio.to_thread(
        server.post, f"/bench/send?session={quote(session)}&count={count}&start=1&prefix={prefix}"
    )
    if reply.get("sent") != count:
        raise NotAvailable(f"send() to a session accepted {reply.get('sent')}/{count} frames")


def replay_problem(got: list[Any], expected: list[str]) -> str | None:
    """What is wrong with a replay (missing, duplicated, out of order, foreign), or None."""
    if got == expected:
        return None
    counts = Counter(got)
    wanted = set(expected)
    missing = sum(1 for f in expected if f not in counts)
    duplicated = sum(n - 1 for f, n in counts.items() if f in wanted and n > 1)
    foreign = sum(n for f, n in counts.items() if f not in wanted)
    firsts = [f for f in dict.fromkeys(got) if f in wanted]
    order = [f for f in expected if f in counts]
    parts = [
        f"{what} {n}"
        for what, n in (("missing", missing), ("duplicated", duplicated), ("foreign", foreign))
        if n
    ]
    if firsts != order:
        parts.append("out of order")
    head = ", ".join(str(f)[:12] for f in got[:3])
    return f"{', '.join(parts) or 'different'} (got {len(got)} frames: {head}, …)"


async def resume_once(
    origin: ServerProcess, target: ServerProcess, frames: int, before: int
) -> Outcome:
    """Connect to ``origin``, read ``before`` frames, abort, let ``origin`` send ``frames`` more
    to the detached session, resume on ``target`` with ack ``before``; time and check it."""
    url = "/ws?stabilizer=1"
    t0 = time.perf_counter()
    ws = await _connect(origin.ws_url + url)
    hello = await _hello(ws)
    fresh = time.perf_counter() - t0
    token, session = hello.get("token"), str(hello.get("session"))
    if not token:
        ws.transport.abort()
        raise NotAvailable("the server's hello carries no reconnect token yet")
    await _send(origin, session, "P", before)
    seen = [await _data(ws, FRAME_TIMEOUT) for _ in range(before)]
    if seen != [f"P:{i}" for i in range(1, before + 1)]:
        ws.transport.abort()
        raise RuntimeError(f"a live connection got {seen[:3]} … instead of P:1 … P:{before}")
    ws.transport.abort()  # a dropped network, not a close: the session must stay resumable
    await asyncio.sleep(0)
    await asyncio.to_thread(_wait_detached, origin, session)
    await _send(origin, session, "R", frames)

    from websockets.exceptions import ConnectionClosed

    resume_url = f"{target.ws_url}{url}&stabilizer_resume={quote(token)}&stabilizer_ack={before}"
    t0 = time.perf_counter()
    try:
        ws = await _connect(resume_url)
    except Exception as exc:  # counted and described, like a resync: never a crash
        return Outcome(fresh, False, reason=f"no connection: {type(exc).__name__}: {exc}"[:160])
    try:
        try:
            hello = await _hello(ws)
        except (ConnectionClosed, TimeoutError, asyncio.TimeoutError) as exc:
            return Outcome(fresh, False, reason=f"no hello: {type(exc).__name__}: {exc}"[:160])
        t_hello = time.perf_counter() - t0
        if not hello.get("resumed"):
            return Outcome(fresh, False, reason=str(hello.get("reason")))
        got: list[Any] = []
        t_last: float | None = None
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError, ConnectionClosed):
            while len(got) < frames:
                got.append(await _data(ws, FRAME_TIMEOUT))
            t_last = time.perf_counter() - t0
            while True:  # anything after the last expected frame is a fault too
                got.append(await _data(ws, LINGER))
        expected = [f"R:{i}" for i in range(1, frames + 1)]
        return Outcome(
            fresh, True, hello=t_hello, last=t_last, problem=replay_problem(got, expected)
        )
    finally:
        await ws.close()


# --- the series ---------------------------------------------------------------------------------


@dataclass
class Nodes:
    """The servers the selected variants need."""

    memory: ServerProcess | None = None
    cluster: list[ServerProcess] = field(default_factory=list)

    def pair(self, variant: str, round_index: int) -> tuple[ServerProcess, ServerProcess]:
        """(the node holding the session, the node the client resumes on) for one round."""
        if variant == "memory_same":
            assert self.memory is not None
            return self.memory, self.memory
        a = self.cluster[round_index % 2]
        b = self.cluster[(round_index + 1) % 2]
        return (a, b) if variant == "redis_cross" else (a, a)


async def _series(
    nodes: Nodes, names: list[str], frames: int, before: int, reps: int
) -> dict[str, Tally]:
    tallies = {name: Tally() for name in names}
    for rnd in range(reps + 1):  # round 0 warms every variant up and is not counted
        shift = rnd % len(names)
        for name in names[shift:] + names[:shift]:
            outcome = await resume_once(*nodes.pair(name, rnd), frames, before)
            if rnd == 0:
                tallies[name].warmup = outcome
            else:
                tallies[name].outcomes.append(outcome)
    return tallies


@contextlib.contextmanager
def _started(names: list[str]) -> Iterator[Nodes]:
    """Start the servers (and redis-server) the variants need; stop them all afterwards."""
    with contextlib.ExitStack() as stack:
        nodes = Nodes()
        if "memory_same" in names:
            nodes.memory = ServerProcess("ours")
        if any(n.startswith("redis_") for n in names):
            redis = stack.enter_context(RedisServer())
            options = {"backend": redis.url, "cluster_name": CLUSTER_NAME}
            nodes.cluster = [ServerProcess("ours", ours_options=options) for _ in range(2)]
        servers = [s for s in (nodes.memory, *nodes.cluster) if s is not None]
        for server in servers:
            stack.callback(server.stop)
            server.spawn()
        for server in servers:
            server.wait_ready()
        yield nodes


# --- results -------------------------------------------------------------------------------------


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def variant_result(tally: Tally) -> Json:
    """A variant's figures, or honestly why there are none."""
    outcomes = tally.outcomes
    resumed = [o for o in outcomes if o.resumed]
    timed = [o for o in resumed if o.last is not None and o.hello is not None]
    inexact = [o for o in resumed if o.problem is not None]
    info: Json = {
        "resumes": len(outcomes),
        "resumed": len(resumed),
        "resyncs": len(outcomes) - len(resumed),
        "resync_reasons": dict(Counter(str(o.reason) for o in outcomes if not o.resumed)),
        "inexact": len(inexact),
        "inexact_examples": [o.problem for o in inexact[:3]],
        "warmup": None
        if tally.warmup is None
        else {"resumed": tally.warmup.resumed, "reason": tally.warmup.reason},
    }
    if len(timed) < MIN_REPS:
        why = (
            f"resumed: false, reason {_reasons(info)} in {info['resyncs']} of "
            f"{len(outcomes)} resumes"
        )
        if resumed:
            why += f"; {len(resumed)} resumed, {len(inexact)} of them not exactly"
        return not_available(why) | {"info": info}
    last = [o.last * 1e3 for o in timed if o.last is not None]
    metrics = {
        "to_last_replayed_ms": summarize(last, "ms"),
        "to_last_replayed_p90_ms": summarize([_p90(last)], "ms", single=True),
        "to_hello_ms": summarize([o.hello * 1e3 for o in timed if o.hello is not None], "ms"),
        "hello_to_last_ms": summarize(
            [(o.last - o.hello) * 1e3 for o in timed if o.last is not None and o.hello is not None],
            "ms",
        ),
        "fresh_connect_ms": summarize([o.fresh * 1e3 for o in outcomes], "ms"),
        "resyncs": summarize([info["resyncs"]], "resumes", single=True),
        "inexact": summarize([len(inexact)], "resumes", single=True),
    }
    return ok(metrics, **info)


def _status(name: str) -> tuple[bool, str | None]:
    usable, reason = ours_status()
    if not usable or name == "memory_same":
        return usable, reason
    if shutil.which("redis-server") is None:
        return False, "redis-server is not installed (make tools installs Debian's)"
    if importlib.util.find_spec("redis") is None:
        return False, "redis-py is not installed (pip install -e '.[redis]')"
    from benchmarks.cluster import ours_cluster_status

    return ours_cluster_status()


def _summary_note(name: str, v: Json) -> str:
    if v.get("status") != "ok":
        return f"{name}: {v.get('status')} — {v.get('reason', '')}"
    m, info = v["metrics"], v["info"]
    last = m["to_last_replayed_ms"]
    text = (
        f"{name}: to the last replayed frame median {last['median']:.2f} ms, p90 "
        f"{m['to_last_replayed_p90_ms']['median']:.2f} ms, max {last['max']:.2f} ms over "
        f"{last['n']} resumes; {info['resyncs']} resyncs"
    )
    if info["resyncs"]:
        text += f" ({_reasons(info)})"
    text += f", {info['inexact']} inexact replays"
    if info["inexact_examples"]:
        text += f" (e.g. {info['inexact_examples'][0]})"
    return text


def _reasons(info: Json) -> str:
    """The reasons of the resumes that did not resume, most frequent first."""
    counts: dict[str, int] = info["resync_reasons"]
    return ", ".join(f"{r!r} × {n}" for r, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def run(
    profile: str = "full",
    *,
    reps: int | None = None,
    frames: int | None = None,
    before: int | None = None,
    variants: str | None = None,
) -> Json:
    """Measure resume latency on the same node and on another, or say why it cannot be."""
    started = time.perf_counter()
    preset = PROFILES[profile]
    reps = max(MIN_REPS, reps or int(preset["reps"]))
    frames = frames or int(preset["frames"])
    before = int(preset["before"]) if before is None else before
    loads = [load_average()]
    results: dict[str, Json] = {}
    runnable = []
    for name in selected(VARIANTS, variants):
        usable, reason = _status(name)
        if usable:
            runnable.append(name)
        else:
            results[name] = not_available(reason or "")
    if runnable:
        try:
            with _started(runnable) as nodes:
                tallies = asyncio.run(_series(nodes, runnable, frames, before, reps))
            for name in runnable:
                results[name] = variant_result(tallies[name])
        except NotAvailable as exc:
            for name in runnable:
                results[name] = not_available(str(exc))
        except Exception as exc:
            for name in runnable:
                results[name] = failed(f"{type(exc).__name__}: {exc}")
    loads.append(load_average())
    results = {name: results[name] for name in VARIANTS if name in results}
    ratios = [
        ratio(results, "redis_cross", "redis_same", "to_last_replayed_ms"),
        ratio(results, "redis_cross", "redis_same", "to_last_replayed_p90_ms"),
        ratio(results, "redis_cross", "redis_same", "to_hello_ms"),
        ratio(results, "redis_cross", "redis_same", "hello_to_last_ms"),
        ratio(results, "redis_same", "memory_same", "to_last_replayed_ms"),
    ]
    cases = [
        case(
            f"{frames} frames buffered while detached",
            {"frames": frames, "before": before},
            results,
            [r for r in ratios if r["value"] is not None],
        )
    ]
    notes = [
        f"One `websockets` client on the loopback speaking protocol v1, uvicorn defaults; it reads "
        f"{before} frames (ack {before}), its TCP connection is aborted, the node holding the "
        f"session sends it {frames} frames while detached (Stabilizer.send from an HTTP route), "
        f"then it resumes with ack {before}. memory_same: one node, in-memory backend. "
        "redis_same / redis_cross: two nodes on one redis-server (no persistence), shared "
        "secret; the client resumes on the same node / on the other one, alternating which "
        "node holds the session.",
        f"{reps} resumes per variant after one discarded warm-up, the variants interleaved in "
        "rotating order; median [min–max]; p90 is the 90th percentile of the same resumes. "
        f"Every replay is checked to be frames 1…{frames}, each exactly once, in order, and "
        f"nothing else for {LINGER * 1e3:g} ms after the last: `inexact` counts the resumes "
        "where it was not; `resyncs` the resumes not answered resumed: true (not timed). "
        "to_hello_ms is where another node's hand-over happens; hello_to_last_ms is the replay.",
        *(_summary_note(name, v) for name, v in results.items()),
        f"load average (1, 5, 15 min) before and after: {loads}",
    ]
    params = {"frames": frames, "before": before, "reps": reps, "variants": list(results)}
    return benchmark(
        NAME,
        "Resume: reconnect to last replayed frame, same node and another node",
        "to_last_replayed_ms",
        params,
        cases,
        notes,
        started,
    )


def main(argv: list[str] | None = None) -> int:
    parser = make_parser("resume", __doc__)
    parser.add_argument("--frames", type=int, default=None, help="frames sent while detached")
    parser.add_argument("--before", type=int, default=None, help="frames read before the drop")
    args = parser.parse_args(argv)
    result = run(
        resolve_profile(args),
        reps=args.reps,
        frames=args.frames,
        before=args.before,
        variants=args.variants,
    )
    return finish_standalone(result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
