"""Connection and rate limits, pure and clock-free."""

from __future__ import annotations


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up; one token per message."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> bool:
        tokens = self.tokens + (now - self.stamp) * self.rate
        self.stamp = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True


class ConnectionCounter:
    """Live connections in total and per remote address; empty addresses are forgotten."""

    __slots__ = ("total", "per_ip", "max_total", "max_per_ip")

    def __init__(self, max_total: int | None, max_per_ip: int | None) -> None:
        self.total = 0
        self.per_ip: dict[str, int] = {}
        self.max_total = max_total
        self.max_per_ip = max_per_ip

    def try_acquire(self, ip: str | None) -> str | None:
        """Take a slot; return None on success or the reason it was refused."""
        if self.max_total is not None and self.total >= self.max_total:
            return "capacity"
        if (
            ip is not None
            and self.max_per_ip is not None
            and self.per_ip.get(ip, 0) >= self.max_per_ip
        ):
            return "per_ip"
        self.total += 1
        if ip is not None:
            self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        return None

    def release(self, ip: str | None) -> None:
        self.total -= 1
        if ip is not None:
            left = self.per_ip.get(ip, 0) - 1
            if left > 0:
                self.per_ip[ip] = left
            else:
                self.per_ip.pop(ip, None)
