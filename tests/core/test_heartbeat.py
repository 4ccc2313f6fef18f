"""The heartbeat timer wheel and decision, driven by a fake clock as the housekeeper drives
them: how late a dead peer is found, and that a cancelled item is gone at once."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from stabilizer_asgi.core.heartbeat import Action, TimerWheel, heartbeat_step


def detection_delay(tick: float, interval: float, timeout: float, last_in: float) -> float:
    """Seconds from a peer's last frame (at `last_in`, accepted then) until the housekeeper's
    verdict, driving the wheel exactly as `Stabilizer._housekeeper` does: wake at each
    `next_tick`, pop what is due, step, reschedule. (Wakes more than a tick before the only
    item is due would pop nothing, so they are skipped.)"""
    wheel: TimerWheel[str] = TimerWheel(tick)
    due = last_in + interval
    wheel.schedule("conn", due)
    ping_at: float | None = None
    now = last_in - 3.3 * tick  # the housekeeper was already running, at any phase
    for _ in range(1000):
        now = wheel.next_tick(max(now, due - 2 * tick))
        for item in wheel.pop_due(now):
            action, ping_at, due = heartbeat_step(last_in, ping_at, now, interval, timeout)
            if action is Action.DEAD:
                return now - last_in
            wheel.schedule(item, due)
    raise AssertionError("never declared dead")


def test_worst_case_detection_is_interval_plus_timeout_plus_two_ticks() -> None:
    """Over every phase of the last frame against the tick boundaries, a silent peer is found
    no earlier than interval + timeout and less than 2 ticks after it; the worst case (last
    frame just after a boundary, timeout just over a whole number of ticks) comes within
    1% of a tick of that bound, so the bound in docs/behaviour.md is also tight."""
    tick, interval, timeout = 0.1, 1.0, 0.3000001
    delays = [detection_delay(tick, interval, timeout, 1000.0 + i * tick / 500) for i in range(500)]
    assert min(delays) >= interval + timeout
    assert max(delays) < interval + timeout + 2 * tick
    assert max(delays) > interval + timeout + 1.99 * tick


def test_with_the_default_tick_detection_is_at_most_one_tick_late() -> None:
    """With tick = min(interval, timeout)/8 and timeout the smaller (the defaults: 25 s and
    10 s, tick 1 s after clamping), the verdict falls on a boundary: at most one tick late."""
    for interval, timeout, tick in [(25.0, 10.0, 1.0), (0.5, 0.5, 0.0625), (2.0, 1.0, 0.125)]:
        delays = [
            detection_delay(tick, interval, timeout, 5000.0 + i * tick / 100) for i in range(100)
        ]
        assert min(delays) >= interval + timeout
        assert max(delays) < interval + timeout + tick


@settings(max_examples=300)
@given(
    st.floats(min_value=0.005, max_value=1.0),
    st.floats(min_value=0.01, max_value=60.0),
    st.floats(min_value=0.01, max_value=60.0),
    st.floats(min_value=0.0, max_value=1e6),
)
def test_detection_is_never_early_nor_more_than_two_ticks_late(
    tick: float, interval: float, timeout: float, last_in: float
) -> None:
    """For any tick, interval, timeout and time of the last frame: within the documented bound."""
    delay = detection_delay(tick, interval, timeout, last_in)
    slack = 1e-9 * max(1.0, last_in)  # float rounding of absolute times
    assert interval + timeout - slack <= delay <= interval + timeout + 2 * tick + slack


@given(st.floats(min_value=0.001, max_value=2.0), st.floats(min_value=0.0, max_value=1e7))
def test_next_tick_reaches_the_next_slot(tick: float, now: float) -> None:
    """`next_tick` is after `now`, at most a tick later, and pops the slot that starts there."""
    wheel: TimerWheel[int] = TimerWheel(tick)
    wake = wheel.next_tick(now)
    assert now < wake <= now + tick * (1 + 1e-9) + 1e-9
    wheel.schedule(1, wake)
    assert wheel.pop_due(wake) == [1]


@given(st.floats(min_value=0.001, max_value=2.0), st.floats(min_value=0.0, max_value=1e7))
def test_an_item_is_never_popped_before_it_is_due(tick: float, at: float) -> None:
    """An item scheduled at `at` is not due at any wake before `at`."""
    wheel: TimerWheel[int] = TimerWheel(tick)
    wheel.schedule(1, at)
    now = at - 3 * tick
    while True:
        now = wheel.next_tick(now)
        due = wheel.pop_due(now)
        if due:
            assert due == [1] and at <= now < at + tick * (1 + 1e-9) + 1e-9
            return


def test_cancel_releases_the_item_at_once() -> None:
    """A cancelled item is gone from the wheel now, not when its slot comes due; cancelling
    twice, or after it was popped, changes nothing."""
    wheel: TimerWheel[str] = TimerWheel(0.5)
    handles = {name: wheel.schedule(name, 10.0) for name in ("a", "b", "c")}
    wheel.cancel("b", handles["b"])
    assert len(wheel) == 2
    wheel.cancel("b", handles["b"])
    assert len(wheel) == 2
    assert wheel.pop_due(10.0) == ["a", "c"]
    wheel.cancel("a", handles["a"])
    assert len(wheel) == 0


def test_cancelled_items_do_not_pile_up_in_a_slot() -> None:
    """Many schedule/cancel cycles into one future slot leave nothing behind."""
    wheel: TimerWheel[object] = TimerWheel(1.0)
    for _ in range(1000):
        item = object()
        wheel.cancel(item, wheel.schedule(item, 25.0))
    assert len(wheel) == 0
    keep = object()
    wheel.schedule(keep, 25.0)
    assert wheel.pop_due(24.0) == []
    assert wheel.pop_due(25.0) == [keep]


def test_a_stale_handle_never_cancels_another_item() -> None:
    """A handle whose item was popped does not cancel what later took its place in the slot."""
    wheel: TimerWheel[str] = TimerWheel(1.0)
    handle = wheel.schedule("a", 5.0)
    assert wheel.pop_due(5.0) == ["a"]
    wheel.schedule("b", 5.0)  # the same slot again: "b" where "a" was
    wheel.cancel("a", handle)
    assert len(wheel) == 1
    assert wheel.pop_due(5.0) == ["b"]
