from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stabilizer_asgi.core.replay import ReplayBuffer
from stabilizer_asgi.exceptions import ConfigError


def _filled(count: int, max_messages: int = 100, max_bytes: int = 10_000) -> ReplayBuffer[str]:
    buffer: ReplayBuffer[str] = ReplayBuffer(max_messages, max_bytes)
    for seq in range(1, count + 1):
        buffer.append(f"m{seq}", 10)
    return buffer


def test_empty_buffer() -> None:
    """A new buffer has sent=acked=0, first_available=1, holds nothing and replays []."""
    buffer: ReplayBuffer[str] = ReplayBuffer(10, 100)
    assert (buffer.sent, buffer.acked, buffer.first_available) == (0, 0, 1)
    assert (len(buffer), buffer.nbytes, buffer.overflowed) == (0, 0, 0)
    assert buffer.since(0) == []
    assert buffer.since(1) is None


def test_append_numbers_frames_from_one() -> None:
    """append returns 1, 2, 3, … and tracks count and bytes."""
    buffer: ReplayBuffer[bytes] = ReplayBuffer(10, 100)
    assert [buffer.append(b"x" * size, size) for size in (1, 2, 3)] == [1, 2, 3]
    assert (buffer.sent, len(buffer), buffer.nbytes) == (3, 3, 6)


def test_since_returns_frames_after_n_in_order() -> None:
    """since(n) gives exactly the frames numbered n+1..sent, oldest first."""
    buffer = _filled(5)
    assert buffer.since(0) == ["m1", "m2", "m3", "m4", "m5"]
    assert buffer.since(3) == ["m4", "m5"]
    assert buffer.since(5) == []


@pytest.mark.parametrize("n", [-1, 6, 100, "2", 2.0, None, True])
def test_since_rejects_impossible_positions(n: object) -> None:
    """since() of a negative, future or non-int position is None, never a guess."""
    assert _filled(5).since(n) is None  # type: ignore[arg-type]


def test_ack_drops_confirmed_frames() -> None:
    """ack(n) frees frames 1..n; frames after n stay replayable."""
    buffer = _filled(5)
    buffer.ack(3)
    assert (buffer.acked, buffer.first_available, len(buffer), buffer.nbytes) == (3, 4, 2, 20)
    assert buffer.since(3) == ["m4", "m5"]
    assert buffer.since(2) is None


def test_stale_ack_is_ignored() -> None:
    """An ack at or below the current one changes nothing."""
    buffer = _filled(5)
    buffer.ack(3)
    buffer.ack(1)
    buffer.ack(3)
    assert (buffer.acked, len(buffer)) == (3, 2)


@pytest.mark.parametrize("n", [6, 10**12])
def test_ack_beyond_sent_is_ignored_not_clamped(n: int) -> None:
    """An ack for frames never sent drops nothing: the frames stay for another connection."""
    buffer = _filled(5)
    buffer.ack(n)
    assert (buffer.acked, len(buffer)) == (0, 5)
    assert buffer.since(0) == ["m1", "m2", "m3", "m4", "m5"]


@pytest.mark.parametrize("n", [-1, "3", 3.0, None, True])
def test_malformed_ack_is_ignored(n: object) -> None:
    """A negative or non-int ack (True included) is ignored."""
    buffer = _filled(5)
    buffer.ack(n)  # type: ignore[arg-type]
    assert (buffer.acked, len(buffer)) == (0, 5)


def test_full_ack_then_more_frames() -> None:
    """After everything is acked the buffer keeps numbering and holding new frames."""
    buffer = _filled(3)
    buffer.ack(3)
    assert (len(buffer), buffer.nbytes, buffer.first_available) == (0, 0, 4)
    assert buffer.since(3) == []
    assert buffer.append("m4", 10) == 4
    assert buffer.since(3) == ["m4"]


def test_message_bound_drops_oldest_and_counts_it() -> None:
    """Over max_messages the oldest frames go, are counted, and make the gap detectable."""
    buffer = _filled(5, max_messages=3)
    assert (len(buffer), buffer.first_available, buffer.overflowed) == (3, 3, 2)
    assert buffer.since(2) == ["m3", "m4", "m5"]
    assert buffer.since(1) is None
    assert buffer.since(0) is None


def test_byte_bound_drops_oldest() -> None:
    """Over max_bytes the oldest frames go until the rest fit."""
    buffer: ReplayBuffer[str] = ReplayBuffer(100, 25)
    for name in "abc":
        buffer.append(name, 10)
    assert (len(buffer), buffer.nbytes, buffer.overflowed) == (2, 20, 1)
    assert buffer.since(1) == ["b", "c"]


def test_oversized_frame_is_held_alone() -> None:
    """A frame larger than max_bytes evicts all older frames but is itself kept for resend."""
    buffer: ReplayBuffer[str] = ReplayBuffer(100, 25)
    buffer.append("a", 10)
    buffer.append("huge", 1000)
    assert (len(buffer), buffer.nbytes, buffer.overflowed) == (1, 1000, 1)
    assert buffer.since(1) == ["huge"]
    buffer.append("b", 5)
    assert (len(buffer), buffer.nbytes) == (1, 5)
    assert buffer.since(2) == ["b"]


def test_acked_frames_dropped_by_ack_do_not_count_as_overflow() -> None:
    """Only frames the peer had not confirmed count in `overflowed`."""
    buffer = _filled(5, max_messages=5)
    buffer.ack(5)
    for _ in range(5):
        buffer.append("x", 10)
    assert buffer.overflowed == 0


def test_clear_frees_frames_but_keeps_numbering() -> None:
    """clear() empties the buffer; older positions then replay as None, new frames continue."""
    buffer = _filled(3)
    buffer.clear()
    assert (len(buffer), buffer.nbytes, buffer.sent, buffer.first_available) == (0, 0, 3, 4)
    assert buffer.since(0) is None
    assert buffer.since(3) == []
    assert buffer.append("m4", 1) == 4


@pytest.mark.parametrize(
    ("max_messages", "max_bytes", "field"),
    [(0, 1, "max_messages"), (1, 0, "max_bytes"), (True, 1, "max_messages"), (1, 1.5, "max_bytes")],
)
def test_bounds_are_validated(max_messages: object, max_bytes: object, field: str) -> None:
    """Bounds must be ints >= 1; ConfigError names the bad one."""
    with pytest.raises(ConfigError) as info:
        ReplayBuffer(max_messages, max_bytes)  # type: ignore[arg-type]
    assert info.value.field == field


@pytest.mark.parametrize("size", [-1, 1.0, None])
def test_append_rejects_bad_size(size: object) -> None:
    """A frame size must be an int >= 0."""
    with pytest.raises(ValueError):
        ReplayBuffer[str](10, 100).append("x", size)  # type: ignore[arg-type]


# --- model-based property ---

operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 40)),
        st.tuples(st.just("ack"), st.integers(-3, 60)),
        st.tuples(st.just("clear"), st.just(0)),
    ),
    max_size=80,
)


@given(operations, st.integers(1, 8), st.integers(1, 100))
def test_matches_list_model(ops: list[tuple[str, int]], max_messages: int, max_bytes: int) -> None:
    """Against a plain list model: since() is exact or None only when frames were dropped."""
    buffer: ReplayBuffer[int] = ReplayBuffer(max_messages, max_bytes)
    sent: list[int] = []  # model: every frame ever appended (frame = its seq); sizes alongside
    sizes: list[int] = []
    held: list[int] = []  # model: seqs still held, recomputed naively
    acked = 0
    overflowed = 0
    for op, arg in ops:
        if op == "append":
            seq = len(sent) + 1
            assert buffer.append(seq, arg) == seq
            sent.append(seq)
            sizes.append(arg)
            held.append(seq)
            while len(held) > max_messages or (
                sum(sizes[s - 1] for s in held) > max_bytes and len(held) > 1
            ):
                held.pop(0)
                overflowed += 1
        elif op == "ack":
            buffer.ack(arg)
            if acked < arg <= len(sent):
                acked = arg
                held = [s for s in held if s > arg]
        else:
            buffer.clear()
            held = []

        assert buffer.sent == len(sent)
        assert buffer.acked == acked
        assert buffer.overflowed == overflowed
        assert len(buffer) == len(held)
        assert buffer.nbytes == sum(sizes[s - 1] for s in held)
        assert len(buffer) <= max_messages
        assert buffer.nbytes <= max_bytes or len(buffer) == 1
        for n in range(-2, len(sent) + 3):
            wanted = sent[n:] if 0 <= n <= len(sent) else None
            got = buffer.since(n)
            if wanted is not None and all(s in held for s in wanted):
                assert got == wanted
            else:
                assert got is None


@given(st.lists(st.integers(0, 500), min_size=1, max_size=50), st.integers(1, 200))
def test_latest_frame_is_always_resendable(sizes: list[int], max_bytes: int) -> None:
    """Whatever the sizes, the last appended frame stays replayable until acked."""
    buffer: ReplayBuffer[int] = ReplayBuffer(5, max_bytes)
    for seq, size in enumerate(sizes, start=1):
        buffer.append(seq, size)
        assert buffer.since(seq - 1) == [seq]


def test_a_lost_frame_makes_every_resume_a_gap() -> None:
    """After `lose()` no position the peer can hold is replayable: even a peer that had every
    frame held gets None (it missed the lost one), and numbering goes on after it."""
    buf: ReplayBuffer[str] = ReplayBuffer(10, 1000)
    buf.append("a", 1)
    buf.append("b", 1)
    assert buf.since(2) == []
    buf.lose()
    assert buf.sent == 3 and len(buf) == 0 and buf.nbytes == 0
    assert [buf.since(n) for n in range(3)] == [None, None, None]
    assert buf.append("c", 1) == 4
    assert buf.since(3) == ["c"]
