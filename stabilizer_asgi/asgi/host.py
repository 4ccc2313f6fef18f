"""What a `Connection` needs from the manager that owns it: the one seam between the two.

`Stabilizer` implements `ConnectionHost`; `asgi/connection.py` knows only this protocol, so
the connection module does not import the manager (not even for type checking). These methods
are the connection's callbacks, not user API: an app calls the manager's documented methods.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..config import StabilizerConfig
    from ..core.metrics import Metrics
    from ..core.session import Session
    from .connection import Connection


class ConnectionHost(Protocol):
    """The manager as a connection sees it."""

    @property
    def config(self) -> StabilizerConfig:
        """The settings the connection applies (limits, heartbeat, timeouts)."""
        ...

    @property
    def metrics(self) -> Metrics:
        """The process totals a connection bumps per frame."""
        ...

    def count_event(self, name: str, n: int = 1) -> None:
        """Add `n` to the counter `name` in `stats()`."""

    def record_rtt(self, rtt: float) -> None:
        """Record one measured round-trip time (seconds) for the RTT percentiles."""

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run `fn(*args)` in the manager's task group."""

    def log_error(self, what: str, session: Session, exc: BaseException) -> None:
        """Log an unexpected failure of `session`'s connection (no payload)."""

    def ack_soon(self, conn: Connection) -> None:
        """Send `conn` an ack on the next housekeeping tick."""

    async def accepted(self, conn: Connection) -> None:
        """The app accepted `conn`: register its session, start its heartbeat, greet it."""

    def aborted(self, conn: Connection, code: int, reason: str) -> None:
        """We closed `conn` with `code` (counted as `closed_<code>`)."""

    def heartbeat_timeout(self, conn: Connection) -> None:
        """`conn` missed its heartbeat deadline (counted, logged, `on_timeout` hook)."""

    def slow_consumer(self, conn: Connection) -> None:
        """`conn` overflowed its send queue under `slow_consumer="close"` (logged)."""

    def unschedule(self, conn: Connection, slot: int) -> None:
        """Take `conn` out of the heartbeat wheel (its `heartbeat_slot` was `slot`)."""
