from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stabilizer_asgi.core.backoff import Backoff
from stabilizer_asgi.exceptions import ConfigError

schedules = st.builds(
    lambda base, factor, max_attempts: Backoff(base, base * factor, max_attempts),
    st.floats(min_value=1e-6, max_value=100.0),
    st.floats(min_value=1.0, max_value=1e6),
    st.one_of(st.none(), st.integers(1, 100)),
)
attempts = st.one_of(st.integers(0, 100), st.integers(0, 10**30))
rands = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


def test_defaults() -> None:
    """The default schedule starts at 0.5 s, caps at 30 s and never gives up."""
    backoff = Backoff()
    assert (backoff.base, backoff.cap, backoff.max_attempts) == (0.5, 30.0, None)
    assert not backoff.exhausted(10**6)


def test_ceiling_doubles_then_caps() -> None:
    """The ceiling is base, 2·base, 4·base, … until it reaches cap."""
    backoff = Backoff(base=1.0, cap=10.0)
    assert [backoff.ceiling(n) for n in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_delay_is_full_jitter() -> None:
    """delay() scales the ceiling by the random draw: 0 at 0, just under the ceiling near 1."""
    backoff = Backoff(base=1.0, cap=10.0)
    assert backoff.delay(2, 0.0) == 0.0
    assert backoff.delay(2, 0.5) == 2.0
    assert backoff.delay(10, 0.25) == 2.5
    assert backoff.delay(2, math.nextafter(1.0, 0.0)) < 4.0


@pytest.mark.parametrize("attempt", [1023, 1024, 1100, 10**6, 10**100])
def test_huge_attempt_numbers_give_cap(attempt: int) -> None:
    """Attempt numbers far beyond float range return cap instead of overflowing."""
    backoff = Backoff(base=0.5, cap=30.0)
    assert backoff.ceiling(attempt) == 30.0
    assert backoff.delay(attempt, 0.5) == 15.0


def test_exhausted_after_max_attempts() -> None:
    """With max_attempts=3, attempts 0..2 are allowed and attempt 3 is not."""
    backoff = Backoff(max_attempts=3)
    assert [backoff.exhausted(n) for n in range(5)] == [False, False, False, True, True]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"base": 0}, "base"),
        ({"base": -1.0}, "base"),
        ({"base": math.nan}, "base"),
        ({"base": math.inf, "cap": math.inf}, "base"),
        ({"base": True}, "base"),
        ({"base": "1"}, "base"),
        ({"base": 2.0, "cap": 1.0}, "cap"),
        ({"cap": math.inf}, "cap"),
        ({"cap": math.nan}, "cap"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 1.5}, "max_attempts"),
        ({"max_attempts": True}, "max_attempts"),
    ],
)
def test_invalid_settings_raise_config_error(kwargs: dict[str, object], field: str) -> None:
    """Bad base, cap or max_attempts raise ConfigError naming the field."""
    with pytest.raises(ConfigError) as info:
        Backoff(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_cap_equal_to_base_is_allowed() -> None:
    """cap == base is a constant-ceiling schedule."""
    assert Backoff(base=2.0, cap=2.0).ceiling(5) == 2.0


def test_is_frozen() -> None:
    """A schedule cannot be changed after construction (so validation cannot be bypassed)."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        Backoff().base = -1.0  # type: ignore[misc]


@pytest.mark.parametrize("attempt", [-1, 1.0, None, True])
def test_bad_attempt_raises_value_error(attempt: object) -> None:
    """A negative or non-int attempt number is a caller bug."""
    with pytest.raises(ValueError):
        Backoff().ceiling(attempt)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Backoff().exhausted(attempt)  # type: ignore[arg-type]


@pytest.mark.parametrize("rand", [-0.1, 1.0, 2.0, math.nan, None])
def test_bad_rand_raises_value_error(rand: object) -> None:
    """The random draw must be a number in [0, 1)."""
    with pytest.raises(ValueError):
        Backoff().delay(0, rand)  # type: ignore[arg-type]


@given(schedules, attempts, rands)
def test_delay_within_zero_and_ceiling(backoff: Backoff, attempt: int, rand: float) -> None:
    """Every delay lies in [0, ceiling(attempt)] and the ceiling never exceeds cap."""
    ceiling = backoff.ceiling(attempt)
    assert backoff.base <= ceiling <= backoff.cap
    assert 0.0 <= backoff.delay(attempt, rand) <= ceiling


@given(schedules, attempts)
def test_ceiling_is_monotone(backoff: Backoff, attempt: int) -> None:
    """The ceiling never decreases from one attempt to the next."""
    assert backoff.ceiling(attempt) <= backoff.ceiling(attempt + 1)


@given(schedules)
def test_ceiling_reaches_cap(backoff: Backoff) -> None:
    """Given enough attempts the ceiling is exactly cap."""
    assert backoff.ceiling(2000) == backoff.cap
