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

    __slots__ = ("_resolution", "_slots", "_heap", "_size")

    def __init__(self, resolution: float) -> None:
        self._resolution = resolution
        # key -> the slot's items (a dict for O(1) `cancel`). A slot emptied by `cancel` stays
        # until it is due, so re-filling it never pushes its key onto the heap again.
        self._slots: dict[int, dict[T, None]] = {}
        self._heap: list[int] = []
        self._size = 0

    # Slot `key` starts at `key * resolution`, computed the same way everywhere, so that
    # rounding cannot make an item due at a wake miss it, or be popped before it is due.

    def schedule(self, item: T, at: float) -> int:
        """Put `item` in the wheel, due at `at`; returns its slot key (for `cancel`).
        An item must be in the wheel at most once."""
        resolution = self._resolution
        key = math.ceil(at / resolution)  # the first slot starting at or after `at`...
        if key * resolution < at:  # ...despite rounding either way
            key += 1
        elif (key - 1) * resolution >= at:
            key -= 1
        bucket = self._slots.get(key)
        if bucket is None:
            bucket = self._slots[key] = {}
            heapq.heappush(self._heap, key)
        bucket[item] = None
        self._size += 1
        return key

    def cancel(self, item: T, key: int) -> None:
        """Take `item` out of slot `key` (as returned by `schedule`), if it is still there."""
        bucket = self._slots.get(key)
        if bucket is not None and bucket.pop(item, _ABSENT) is not _ABSENT:
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
        while heap and heap[0] * resolution <= now:
            due.extend(slots.pop(heapq.heappop(heap)))
        self._size -= len(due)
        return due

    def __len__(self) -> int:
        return self._size


_ABSENT: object = object()
