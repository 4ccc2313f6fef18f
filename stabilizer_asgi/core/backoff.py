"""Reconnect backoff with full jitter: the delay is uniform in ``[0, min(cap, base * 2**n))``.

Full jitter spreads a crowd of clients that lost the same server over the whole window instead of
having them retry in lockstep. The random draw is passed in, so the schedule is pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..exceptions import ConfigError


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Backoff:
    """Reconnect schedule: attempt ``n`` (from 0) waits ``rand * min(cap, base * 2**n)`` seconds."""

    base: float = 0.5
    cap: float = 30.0
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if not _is_real(self.base) or not math.isfinite(self.base) or self.base <= 0:
            raise ConfigError("base", self.base, "a finite number > 0")
        if not _is_real(self.cap) or not math.isfinite(self.cap) or self.cap < self.base:
            raise ConfigError("cap", self.cap, "a finite number >= base")
        if self.max_attempts is not None and (
            not isinstance(self.max_attempts, int)
            or isinstance(self.max_attempts, bool)
            or self.max_attempts < 1
        ):
            raise ConfigError("max_attempts", self.max_attempts, "None or an int >= 1")

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the delay before attempt ``attempt`` (0-based)."""
        _check_attempt(attempt)
        try:
            grown = math.ldexp(self.base, attempt)
        except OverflowError:
            # base * 2**attempt is beyond any float, so certainly beyond cap.
            return self.cap
        return min(self.cap, grown)

    def delay(self, attempt: int, rand: float) -> float:
        """Seconds to wait before attempt ``attempt``; ``rand`` is drawn uniformly from [0, 1)."""
        if not _is_real(rand) or not 0.0 <= rand < 1.0:
            raise ValueError("rand must be a number in [0, 1)")
        return rand * self.ceiling(attempt)

    def exhausted(self, attempt: int) -> bool:
        """Whether attempt ``attempt`` (0-based) is past ``max_attempts`` and must not be made."""
        _check_attempt(attempt)
        return self.max_attempts is not None and attempt >= self.max_attempts


def _check_attempt(attempt: int) -> None:
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 0:
        raise ValueError("attempt must be an int >= 0")
