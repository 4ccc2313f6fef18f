"""Heartbeat bookkeeping: a coarse timer wheel and the per-session decision.

No timer or task exists per session or per ping: each session sits in one wheel slot, and the
single housekeeping loop pops due slots and asks `heartbeat_step` what to do.
"""

from __future__ import annotations

import enum
import heapq
import math
from typing import Generic, TypeVar

T = TypeVar("T")


class Action(enum.Enum):
    """What the housekeeper must do for one session now."""

    WAIT = 0
    PING = 1
    DEAD = 2


def heartbeat_step(
    last_in: float, ping_at: float | None, now: float, interval: float, timeout: float
) -> tuple[Action, float | None, float]:
    """Decide for one session: returns (action, new ping_at, next check time).

    A ping goes out only after `interval` seconds without any inbound frame; the session is
    dead when nothing arrived within `timeout` seconds after the ping.
    """
    if ping_at is not None:
        if last_in >= ping_at:
            ping_at = None  # something arrived after the ping: alive
        elif now >= ping_at + timeout:
            return Action.DEAD, ping_at, now
        else:
            return Action.WAIT, ping_at, ping_at + timeout
    due = last_in + interval
    if now >= due:
        return Action.PING, now, now + timeout
    return Action.WAIT, None, due


class TimerWheel(Generic[T]):
    """Items bucketed by due time at `resolution` seconds (one tick); pop everything due and
    cancel one item, each O(1) per item.

    An item due at `at` goes into the slot that starts at the first tick boundary at or after
    `at`. Its driver wakes at each boundary (`next_tick`) and pops the slots that have started
    (`pop_due`), so an item is visited at its due time or up to one tick after it, never before.
    """

    __slots__ = ("_resolution", "_slots", "_heap", "_holes", "_size")

    def __init__(self, resolution: float) -> None:
        self._resolution = resolution
        # key -> the slot's items; `cancel` leaves None in an item's place (a list appends
        # faster than a dict inserts, and `schedule` runs once per connection per interval).
        self._slots: dict[int, list[T | None]] = {}
        self._heap: list[int] = []
        self._holes: set[int] = set()  # keys of slots that hold a None
        self._size = 0

    # Slot `key` starts at `key * resolution`, computed the same way everywhere, so that
    # rounding cannot make an item due at a wake miss it, or be popped before it is due.

    def schedule(self, item: T, at: float) -> int:
        """Put `item` in the wheel, due at `at`; returns a handle for `cancel` (the slot key
        and the item's place in it; at most 2**32 items per slot). An item must be in the
        wheel at most once."""
        resolution = self._resolution
        key = math.ceil(at / resolution)  # the first slot starting at or after `at`...
        if key * resolution < at:  # ...despite rounding either way
            key += 1
        elif (key - 1) * resolution >= at:
            key -= 1
        bucket = self._slots.get(key)
        if bucket is None:
            bucket = self._slots[key] = []
            heapq.heappush(self._heap, key)
        bucket.append(item)
        self._size += 1
        return key << 32 | (len(bucket) - 1)

    def cancel(self, item: T, handle: int) -> None:
        """Take `item` out of the wheel (`handle` from its `schedule`), if it is still there."""
        key = handle >> 32
        index = handle & 0xFFFFFFFF
        bucket = self._slots.get(key)
        if bucket is not None and index < len(bucket) and bucket[index] is item:
            bucket[index] = None
            self._holes.add(key)
            self._size -= 1

    def next_tick(self, now: float) -> float:
        """The start of the first slot after `now`: when the driver should next `pop_due`."""
        resolution = self._resolution
        key = math.floor(now / resolution) + 1
        if key * resolution <= now:
            key += 1
        elif (key - 1) * resolution > now:
            key -= 1
        return key * resolution

    def pop_due(self, now: float) -> list[T]:
        """Remove and return every item whose slot has started by `now`."""
        resolution = self._resolution
        due: list[T] = []
        heap = self._heap
        slots = self._slots
        holes = self._holes
        while heap and heap[0] * resolution <= now:
            key = heapq.heappop(heap)
            bucket = slots.pop(key)
            if key in holes:
                holes.discard(key)
                due.extend(item for item in bucket if item is not None)
            else:
                due.extend(bucket)  # type: ignore[arg-type]  # no None in it
        self._size -= len(due)
        return due

    def __len__(self) -> int:
        return self._size
