"""A session as bytes, to move it to another node (cluster mode: hand-over and parking).

A snapshot holds everything an exact resume needs on the node that takes the session over:
who it is (id, client id, groups, user data), its counters both ways, its token generation
(and whether the client confirmed it), the server→client frames the client has not
acknowledged (with their sequence numbers), and the client→server frames read off its last
connection that its app never took. It is JSON (UTF-8); binary frames are base64.

User data must be JSON-serializable to travel (`SnapshotError` otherwise): a value of any other
type cannot be rebuilt faithfully on another process, and unpickling what a shared store hands
over would let whoever can write to that store run code on every node.
"""

from __future__ import annotations

import base64
import json
import time
from collections import deque
from collections.abc import Callable, MutableMapping
from typing import Any

from .replay import ReplayBuffer
from .session import Session, SessionState

FORMAT = 1


class SnapshotError(ValueError):
    """A session that cannot be snapshotted (its data is not JSON), or bytes that are not a
    snapshot of this format."""


def _frame_out(frame: MutableMapping[str, Any], size: int) -> list[Any]:
    text = frame.get("text")
    if text is not None:
        return [size, 0, text]
    return [size, 1, base64.b64encode(bytes(frame["bytes"])).decode("ascii")]


def _frame_in(item: list[Any], kind: str) -> tuple[dict[str, Any], int]:
    size, binary, body = item
    if binary:
        return {"type": kind, "bytes": base64.b64decode(body)}, int(size)
    return {"type": kind, "text": str(body)}, int(size)


def dumps(session: Session) -> bytes:
    """The snapshot of a detached session; `SnapshotError` if its data is not JSON."""
    replay = session._replay
    frames: list[Any] = []
    first = acked = 0
    if replay is not None:
        first = replay.first_available
        acked = replay.acked
        held = replay._frames
        if held:
            it = iter(held)
            frames = [_frame_out(frame, size) for frame, size in zip(it, it, strict=True)]
    carry = [_frame_out(m, 0) for m in session._carry] if session._carry else []
    data = dict(session._data) if session._data else {}
    doc = {
        "f": FORMAT,
        "id": session.id,
        "client": session.client_id,
        "opted_in": session.opted_in,
        "created": session.created_at,
        "idle": round(max(0.0, time.monotonic() - session._last_in), 3),
        "remote": list(session.remote) if session.remote else None,
        "rtt": session.rtt,
        "groups": sorted(session.groups),
        "in": [session.frames_in, session.bytes_in],
        "out": [session.frames_out, session.bytes_out, session.dropped],
        "close": [session.close_code, session.close_reason],
        "gen": [session._generation, session._token_confirmed],
        "replay": None if replay is None else [first, acked, frames],
        "carry": carry,
        "data": data,
    }
    try:
        return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        keys = sorted(k for k, v in data.items() if not _is_json(v))
        raise SnapshotError(
            f"session data is not JSON-serializable (keys: {', '.join(keys) or '?'})"
        ) from exc


def _is_json(value: object) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def loads(
    blob: bytes,
    *,
    memory_limit: int | None,
    on_charge: Callable[[Session, int], None] | None,
    idle_replay: ReplayBuffer[Any] | None,
    now: float | None = None,
) -> Session:
    """Rebuild a snapshot as a DETACHED session of this node (not registered anywhere yet).

    `idle_replay` is the node's shared empty buffer (its bounds are this node's); frames beyond
    them are dropped oldest first, so a resume that needs them answers "gap"."""
    try:
        doc = json.loads(blob)
        if not isinstance(doc, dict) or doc.get("f") != FORMAT:
            raise SnapshotError("not a session snapshot of a known format")
        mono = time.monotonic() if now is None else now
        remote = doc["remote"]
        session = Session(
            session_id=str(doc["id"]),
            client_id=doc["client"],
            opted_in=bool(doc["opted_in"]),
            remote=(str(remote[0]), int(remote[1])) if remote else None,
            now=mono,
            memory_limit=memory_limit,
            on_charge=on_charge,
        )
        session.state = SessionState.DETACHED
        session.created_at = float(doc["created"])
        session._last_in = mono - float(doc.get("idle", 0.0))
        session.rtt = doc["rtt"]
        session.groups = frozenset(str(g) for g in doc["groups"])
        session.frames_in, session.bytes_in = (int(x) for x in doc["in"])
        session.frames_out, session.bytes_out, session.dropped = (int(x) for x in doc["out"])
        session.close_code, session.close_reason = doc["close"][0], str(doc["close"][1])
        session._generation, session._token_confirmed = int(doc["gen"][0]), bool(doc["gen"][1])
        replay = doc["replay"]
        if replay is not None and idle_replay is not None:
            first, acked, frames = replay
            buffer = idle_replay.empty_copy()
            buffer._sent = int(first) - 1
            buffer._acked = int(acked)
            session._replay = buffer
            for item in frames:
                frame, size = _frame_in(item, "websocket.send")
                session._buffer_out(frame, size)
        if doc["carry"]:
            session._carry = deque(_frame_in(item, "websocket.receive")[0] for item in doc["carry"])
        for key, value in doc["data"].items():
            session.data[str(key)] = value
    except SnapshotError:
        raise
    except Exception as exc:  # malformed: never a half-built session
        raise SnapshotError(f"malformed session snapshot: {type(exc).__name__}") from exc
    return session
