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
    """Items bucketed by due time at `resolution` seconds; pop everything due, O(1) per item."""

    __slots__ = ("_resolution", "_slots", "_heap", "_size")

    def __init__(self, resolution: float) -> None:
        self._resolution = resolution
        self._slots: dict[int, list[T]] = {}
        self._heap: list[int] = []
        self._size = 0

    def schedule(self, item: T, at: float) -> None:
        key = math.ceil(at / self._resolution)
        bucket = self._slots.get(key)
        if bucket is None:
            bucket = self._slots[key] = []
            heapq.heappush(self._heap, key)
        bucket.append(item)
        self._size += 1

    def pop_due(self, now: float) -> list[T]:
        limit = math.floor(now / self._resolution)
        due: list[T] = []
        heap = self._heap
        while heap and heap[0] <= limit:
            due.extend(self._slots.pop(heapq.heappop(heap)))
        self._size -= len(due)
        return due

    def __len__(self) -> int:
        return self._size
