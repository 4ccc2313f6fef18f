"""The bounded replay buffer behind exact resume: one per session and direction."""

from __future__ import annotations

from collections import deque
from itertools import islice
from typing import Any, Generic, Protocol, TypeVar

from ..exceptions import ConfigError

T = TypeVar("T")


class Tally(Protocol):
    """Where buffers add up what they hold (`core.metrics.Metrics` is one)."""

    replay_frames: int


class ReplayBuffer(Generic[T]):
    """Data frames sent but not yet acknowledged, numbered 1, 2, 3, … in the order appended.

    Bounded by ``max_messages`` and ``max_bytes``: when an append goes over either bound the
    oldest frames are dropped, acknowledged or not, and counted in ``overflowed``. A later
    ``since()`` that would need a dropped frame answers ``None``, so a gap is always detected and
    never replayed partially. A single frame larger than ``max_bytes`` is held alone (everything
    older is dropped): the latest frame is always resendable, and ``nbytes`` exceeds
    ``max_bytes`` only in that case.

    Sequence numbers keep counting after ``clear()``, so a resume that asks for cleared frames is
    also answered ``None`` rather than with the wrong frames.

    A buffer that never held a frame (``sent == 0``) is left unchanged by ``ack()``, ``since()``
    and ``clear()``: one such buffer can stand for every idle session, each taking its own
    (``empty_copy()``) at its first frame.
    """

    # An idle session holds no frames; allocating the deque lazily (an empty one is ~760 bytes)
    # keeps two buffers per session well inside the per-connection memory budget.
    __slots__ = (
        "_acked",
        "_frames",
        "_max_bytes",
        "_max_messages",
        "_nbytes",
        "_overflowed",
        "_sent",
        "_tally",
    )

    def __init__(self, max_messages: int, max_bytes: int, tally: Tally | None = None) -> None:
        if not isinstance(max_messages, int) or isinstance(max_messages, bool) or max_messages < 1:
            raise ConfigError("max_messages", max_messages, "an int >= 1")
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1:
            raise ConfigError("max_bytes", max_bytes, "an int >= 1")
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        # Frames and their sizes alternate (frame, size, frame, size, …): a tuple per held
        # frame would be one more GC-tracked object per session per broadcast.
        self._frames: deque[Any] | None = None
        self._sent = 0
        self._acked = 0
        self._nbytes = 0
        self._overflowed = 0
        # Process-wide totals of what every buffer holds (`core.metrics.Metrics`), kept here
        # so that reporting them needs no walk over sessions.
        self._tally = tally

    @property
    def max_messages(self) -> int:
        """Most frames held at once."""
        return self._max_messages

    @property
    def max_bytes(self) -> int:
        """Most bytes held at once (unless a single frame is larger)."""
        return self._max_bytes

    @property
    def sent(self) -> int:
        """Sequence number of the last appended frame; 0 before the first."""
        return self._sent

    @property
    def acked(self) -> int:
        """Highest sequence number the peer has confirmed."""
        return self._acked

    @property
    def first_available(self) -> int:
        """Lowest sequence number still held; ``sent + 1`` when nothing is held."""
        return self._sent - len(self) + 1

    @property
    def nbytes(self) -> int:
        """Sum of the sizes of the frames held."""
        return self._nbytes

    @property
    def overflowed(self) -> int:
        """Unacknowledged frames dropped because a bound was hit."""
        return self._overflowed

    def empty_copy(self) -> ReplayBuffer[T]:
        """A new, empty buffer with the same bounds (adding up into the same tally)."""
        return ReplayBuffer(self._max_messages, self._max_bytes, self._tally)

    def __len__(self) -> int:
        return 0 if self._frames is None else len(self._frames) >> 1

    def append(self, frame: T, size: int) -> int:
        """Hold ``frame`` (``size`` bytes) and return its sequence number."""
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError("size must be an int >= 0")
        return self._push(frame, size)

    def _push(self, frame: T, size: int) -> int:
        """`append` for callers that pass a size they computed (the broadcast hot path)."""
        frames = self._frames
        if frames is None:
            frames = self._frames = deque()
        frames.append(frame)
        frames.append(size)
        self._sent += 1
        self._nbytes += size
        tally = self._tally
        if tally is not None:
            tally.replay_frames += 1
        while len(frames) > 2 * self._max_messages or (
            self._nbytes > self._max_bytes and len(frames) > 2
        ):
            # Every held frame is unacknowledged: ack() drops the acknowledged ones at once.
            frames.popleft()
            self._nbytes -= frames.popleft()
            self._overflowed += 1
            if tally is not None:
                tally.replay_frames -= 1
        return self._sent

    def ack(self, n: int) -> None:
        """The peer confirms it has frames ``1..n``: drop them.

        Stale acks (``n <= acked``) and anything that is not an ``int >= 0`` are ignored. An ack
        above ``sent`` is ignored entirely, not clamped: a peer confirming frames that were never
        sent is confused or lying, and trusting it would drop frames that another connection of
        the same session may still need replayed.
        """
        if not isinstance(n, int) or isinstance(n, bool) or n <= self._acked or n > self._sent:
            return
        self._acked = n
        frames = self._frames
        if frames is None:
            return
        drop = min(n - self.first_available + 1, len(frames) >> 1)
        for _ in range(drop):
            frames.popleft()
            self._nbytes -= frames.popleft()
        tally = self._tally
        if tally is not None:
            tally.replay_frames -= drop
        if not frames:
            self._frames = None

    def since(self, n: int) -> list[T] | None:
        """The frames after ``n``, in order, if exactly those are held; else ``None``.

        ``None`` means the gap cannot be filled: frames after ``n`` were dropped (overflow,
        acknowledgement or ``clear()``), or ``n`` is negative, above ``sent`` or not an int.
        ``since(sent)`` is ``[]``.
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 0 or n > self._sent:
            return None
        skip = n - self.first_available + 1
        if skip < 0:
            return None
        if self._frames is None:
            return []
        return list(islice(self._frames, 2 * skip, None, 2))

    def lose(self) -> None:
        """A frame meant for the peer was lost before it reached this buffer (in cluster mode:
        a publication that never arrived). It counts as sent and is not held, with everything
        before it dropped, so no resume of this session can be answered exactly any more."""
        self.clear()
        self._sent += 1
        self._overflowed += 1

    def clear(self) -> None:
        """Drop every frame held and free its memory; numbering continues from ``sent``."""
        tally = self._tally
        if tally is not None:
            tally.replay_frames -= len(self)
        self._frames = None
        self._nbytes = 0
