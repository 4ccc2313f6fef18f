"""`Session`: what the library knows about one logical client connection."""

from __future__ import annotations

import enum
import secrets
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

from ..exceptions import MemoryLimitExceededError
from .replay import ReplayBuffer

_EMPTY: frozenset[str] = frozenset()
_MAX_SIZEOF_NODES = 10_000


class SessionState(str, enum.Enum):
    """Lifecycle of a session: live, waiting to be resumed, or over."""

    CONNECTED = "connected"
    DETACHED = "detached"
    CLOSED = "closed"


def new_session_id() -> str:
    """128 random bits, URL-safe base64 (22 characters)."""
    return secrets.token_urlsafe(16)


def estimate_size(value: object) -> int:
    """Approximate bytes held by `value` (containers followed, bounded work)."""
    seen: set[int] = set()
    stack = [value]
    total = 0
    nodes = 0
    while stack and nodes < _MAX_SIZEOF_NODES:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        nodes += 1
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
    return total


class SessionData(MutableMapping[str, Any]):
    """Per-session user data whose size is accounted against the memory limits.

    Values are measured when stored; mutating a stored container in place is not re-measured
    (store it again to re-account it).
    """

    __slots__ = ("_items", "_sizes", "_owner")

    def __init__(self, owner: Session) -> None:
        self._items: dict[str, Any] = {}
        self._sizes: dict[str, int] = {}
        self._owner = owner

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __setitem__(self, key: str, value: Any) -> None:
        size = estimate_size(key) + estimate_size(value)
        delta = size - self._sizes.get(key, 0)
        self._owner._charge(delta)  # raises MemoryLimitExceededError and stores nothing
        self._items[key] = value
        self._sizes[key] = size

    def __delitem__(self, key: str) -> None:
        del self._items[key]
        self._owner._charge(-self._sizes.pop(key))

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"SessionData({self._items!r})"

    @property
    def nbytes(self) -> int:
        """Bytes accounted for the stored items."""
        return sum(self._sizes.values())

    def _drop_all(self) -> int:
        freed = sum(self._sizes.values())
        self._items.clear()
        self._sizes.clear()
        return freed


class Session:
    """One logical client: survives reconnects while `DETACHED`, ends when `CLOSED`."""

    __slots__ = (
        "id",
        "client_id",
        "state",
        "opted_in",
        "resumed",
        "created_at",
        "remote",
        "rtt",
        "groups",
        "frames_in",
        "frames_out",
        "bytes_in",
        "bytes_out",
        "dropped",
        "close_code",
        "close_reason",
        "_data",
        "_last_in",
        "_last_out",
        "_mono0",
        "_mem",
        "_limit",
        "_on_charge",
        "_conn",
        "_seq",
        "_detached_at",
        "_generation",
        "_token_confirmed",
        "_ping_at",
        "_ping_ts",
        "_replay",
        "_carry",
        "_unacked_in",
        "_unacked_in_bytes",
        "_cluster_client",
        "__weakref__",
    )

    def __init__(
        self,
        *,
        session_id: str | None = None,
        client_id: str | None = None,
        opted_in: bool = False,
        remote: tuple[str, int] | None = None,
        now: float | None = None,
        memory_limit: int | None = None,
        on_charge: Callable[[Session, int], None] | None = None,
    ) -> None:
        mono = time.monotonic() if now is None else now
        self.id = session_id or new_session_id()
        self.client_id = client_id
        self.state = SessionState.CONNECTED
        self.opted_in = opted_in
        self.resumed = False
        self.created_at = time.time()
        self.remote = remote
        self.rtt: float | None = None
        self.groups: frozenset[str] = _EMPTY
        self.frames_in = 0
        self.frames_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.dropped = 0
        self.close_code: int | None = None
        self.close_reason = ""
        self._data: SessionData | None = None
        self._last_in = mono
        self._last_out = mono
        self._mono0 = mono
        self._mem = 0
        self._limit = memory_limit
        self._on_charge = on_charge
        self._conn: Any = None
        self._seq = 0
        self._detached_at: float | None = None
        self._generation = 0
        # Whether the client proved it holds the token of `_generation` (see core/tokens.py):
        # until then the previous generation may resume once more.
        self._token_confirmed = True
        self._ping_at: float | None = None
        self._ping_ts: int | None = None
        # Resume (opted-in sessions): server→client frames not yet acknowledged by the client
        # (until the first one, a buffer shared by every idle session: see `_buffer_out`),
        # frames read off a dropped connection that its app never took, and how many frames the
        # app took since the last `ack` sent to the client.
        self._replay: ReplayBuffer[MutableMapping[str, Any]] | None = None
        self._carry: deque[MutableMapping[str, Any]] | None = None
        self._unacked_in = 0
        self._unacked_in_bytes = 0
        # Registered in the cluster's client-id index (duplicate_client other than "allow").
        self._cluster_client = False

    # A session is a live object (its connection, buffers, the manager's bookkeeping): a copy
    # would be a second session nobody runs. Servers and frameworks copy `scope["state"]`
    # (shallow, or `copy.deepcopy`), and every copy must still name this very session.
    def __copy__(self) -> Session:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Session:
        return self

    @property
    def data(self) -> SessionData:
        """User data, counted toward `max_memory_per_session` / `max_total_memory`."""
        data = self._data
        if data is None:
            data = self._data = SessionData(self)
        return data

    @property
    def last_seen(self) -> float:
        """Wall-clock time (epoch seconds) of the last inbound frame."""
        return self.created_at + (self._last_in - self._mono0)

    @property
    def memory(self) -> int:
        """Bytes accounted to this session: user data plus buffered frames."""
        return self._mem

    def _charge(self, delta: int) -> None:
        """Account `delta` bytes; refuse (raise) if the per-session limit would be passed."""
        if delta > 0 and self._limit is not None and self._mem + delta > self._limit:
            raise MemoryLimitExceededError(
                f"session {self.id} would use {self._mem + delta} bytes "
                f"(max_memory_per_session={self._limit})"
            )
        self._mem += delta
        if self._on_charge is not None:
            try:
                self._on_charge(self, delta)
            except MemoryLimitExceededError:
                self._mem -= delta
                raise

    def _release_data(self) -> None:
        if self._data is not None:
            freed = self._data._drop_all()
            self._mem -= freed
            if self._on_charge is not None and freed:
                self._on_charge(self, -freed)

    def _release_buffers(self) -> None:
        """Free the replay buffer and carried frames (the session cannot be resumed any more)."""
        freed = 0
        replay = self._replay
        if replay is not None:
            freed += replay.nbytes
            replay.clear()
        carry = self._carry
        if carry is not None:
            self._carry = None
        if freed:
            self._mem -= freed
            if self._on_charge is not None:
                self._on_charge(self, -freed)

    def _buffer_out(self, frame: MutableMapping[str, Any], size: int) -> bool:
        """Hold an outbound data frame for replay; False if memory limits forbid (a gap)."""
        replay = self._replay
        assert replay is not None
        if not replay._sent:
            # The first frame: until now the session may have shared an idle buffer.
            replay = self._replay = replay.empty_copy()
        before = replay._nbytes
        replay._push(frame, size)  # the size was computed by the middleware: no checks
        delta = replay._nbytes - before
        if delta:
            try:
                self._charge(delta)
            except MemoryLimitExceededError:
                # Cannot hold it: forget the backlog, so a resume reports a gap, never a hole.
                replay.clear()
                self._charge(-before)
                return False
        return True

    def _hold(self, frame: MutableMapping[str, Any], size: int) -> bool:
        """A frame for a session with no open connection: counted as sent, kept for replay."""
        if not self._buffer_out(frame, size):
            return False
        self.frames_out += 1
        self.bytes_out += size
        return True

    def _lose_replay(self) -> None:
        """A frame meant for the client was lost before it reached the replay buffer: no
        resume of this session can be exact any more (`ReplayBuffer.lose`)."""
        replay = self._replay
        if replay is None:
            return
        if not replay.sent:  # possibly the buffer idle sessions share: take its own first
            replay = self._replay = replay.empty_copy()
        replay.lose()

    def _ack_out(self, n: int) -> None:
        """The client confirms server→client frames 1..n: free them."""
        replay = self._replay
        if replay is None:
            return
        before = replay.nbytes
        replay.ack(n)
        freed = before - replay.nbytes
        if freed:
            self._charge(-freed)

    def __repr__(self) -> str:
        return (
            f"Session(id={self.id!r}, client_id={self.client_id!r}, state={self.state.value}, "
            f"opted_in={self.opted_in}, groups={sorted(self.groups)!r})"
        )
