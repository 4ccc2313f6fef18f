"""Session snapshots (the form a session takes to move between nodes): pure, no event loop."""

from __future__ import annotations

from collections import deque

import pytest

from stabilizer_asgi.core import snapshot
from stabilizer_asgi.core.replay import ReplayBuffer
from stabilizer_asgi.core.session import Session, SessionState


def _detached_session() -> Session:
    session = Session(client_id="c1", opted_in=True, remote=("10.0.0.1", 5000), now=100.0)
    session._replay = ReplayBuffer(10, 10_000)
    for n in range(1, 5):
        session._hold({"type": "websocket.send", "text": f"t{n}"}, 2)
    session._hold({"type": "websocket.send", "bytes": b"\x00\xff"}, 2)
    session._ack_out(2)
    session._carry = deque([{"type": "websocket.receive", "text": "unread"}])
    session.groups = frozenset({"room", "ops"})
    session.frames_in, session.bytes_in = 7, 70
    session._generation, session._token_confirmed = 3, False
    session.data["name"] = "ada"
    session.data["tags"] = ["a", 1, None]
    session.state = SessionState.DETACHED
    return session


def test_a_snapshot_rebuilds_the_session_a_resume_needs() -> None:
    """Everything an exact resume needs survives the round trip: ids, groups, data,
    counters, token generation, unacknowledged frames with their numbers, unread frames."""
    before = _detached_session()
    after = snapshot.loads(
        snapshot.dumps(before),
        memory_limit=None,
        on_charge=None,
        idle_replay=ReplayBuffer(10, 10_000),
        now=500.0,
    )
    assert (after.id, after.client_id, after.opted_in) == (before.id, "c1", True)
    assert after.state is SessionState.DETACHED
    assert after.groups == {"room", "ops"} and after.remote == ("10.0.0.1", 5000)
    assert dict(after.data) == {"name": "ada", "tags": ["a", 1, None]}
    assert (after.frames_in, after.frames_out) == (7, 5)
    assert (after._generation, after._token_confirmed) == (3, False)
    assert after._replay is not None and after._replay.sent == 5
    replayed = after._replay.since(2)
    assert replayed == [
        {"type": "websocket.send", "text": "t3"},
        {"type": "websocket.send", "text": "t4"},
        {"type": "websocket.send", "bytes": b"\x00\xff"},
    ]
    assert after._replay.since(1) is None  # acknowledged frames are not carried
    assert list(after._carry or []) == [{"type": "websocket.receive", "text": "unread"}]
    assert after.memory > 0


def test_a_smaller_replay_bound_on_the_new_node_makes_a_gap_not_a_hole() -> None:
    """Frames beyond the receiving node's replay bound are dropped oldest first, so a resume
    that needs them is answered None (a gap), never a partial replay."""
    after = snapshot.loads(
        snapshot.dumps(_detached_session()),
        memory_limit=None,
        on_charge=None,
        idle_replay=ReplayBuffer(2, 10_000),
    )
    assert after._replay is not None
    assert after._replay.since(2) is None
    assert after._replay.since(3) is not None


def test_data_that_is_not_json_cannot_travel() -> None:
    """A session whose data holds a non-JSON value is refused, naming the key, not the value."""
    session = _detached_session()
    session.data["when"] = {1, 2}
    with pytest.raises(snapshot.SnapshotError, match="keys: when") as info:
        snapshot.dumps(session)
    assert "{1, 2}" not in str(info.value)


@pytest.mark.parametrize("blob", [b"", b"[]", b'{"f": 99}', b'{"f": 1}', b"\xff"])
def test_bytes_that_are_not_a_snapshot_raise_snapshot_error(blob: bytes) -> None:
    """Malformed input never builds a half session: SnapshotError, whatever the bytes."""
    with pytest.raises(snapshot.SnapshotError):
        snapshot.loads(blob, memory_limit=None, on_charge=None, idle_replay=None)
