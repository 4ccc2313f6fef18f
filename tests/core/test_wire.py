from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from stabilizer_asgi.core import wire
from stabilizer_asgi.core.wire import RS

_TS = st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False)
_N = st.integers(min_value=0, max_value=2**53 - 1)


@given(_N, _N)
def test_encode_ping_is_the_json_control_frame(ts: int, n: int) -> None:
    """The fast ping is byte for byte what the JSON encoder writes."""
    assert wire.encode_ping(ts, n) == wire.encode_control("ping", ts=ts, n=n)


@given(_TS, st.integers(min_value=0, max_value=10**15 - 1))
def test_decode_pong_reads_the_canonical_pong(ts: float, n: int) -> None:
    """A pong as our clients write it (JSON dumps of {t, ts, n}) is read without json."""
    text = RS + json.dumps({"t": "pong", "ts": ts, "n": n}, separators=(",", ":"))
    assert wire.decode_pong(text) == (ts, n)


@pytest.mark.parametrize(
    "text",
    [
        RS + '{"t":"pong","ts":1.5}',  # no n
        RS + '{"t":"pong","ts":1.5,"n":-1}',
        RS + '{"t":"pong","ts":1.5,"n":1.0}',
        RS + '{"t":"pong","ts":"1.5","n":1}',
        RS + '{"t":"pong","ts":01,"n":1}',
        RS + '{"t":"pong","ts":NaN,"n":1}',
        RS + '{"t":"pong","ts":1.5,"n":1,"x":2}',
        RS + '{"t":"pong", "ts":1.5,"n":1}',
        RS + '{"t":"pong","ts":1.5,"n":1} ',
        RS + '{"t":"pong","ts":1.5,"n":١}',  # a non-ASCII digit
        RS + '{"t":"pong","ts":1.5,"n":1234567890123456}',  # beyond the canonical bound
        RS + '{"t":"ping","ts":1.5,"n":1}',
    ],
)
def test_decode_pong_leaves_anything_else_to_the_json_parser(text: str) -> None:
    """Not the canonical form: None, so the full control parser (and its checks) decides."""
    assert wire.decode_pong(text) is None


def test_decode_pong_accepts_json_number_forms() -> None:
    """Integers, negative numbers and exponents are JSON numbers too."""
    assert wire.decode_pong(RS + '{"t":"pong","ts":12,"n":0}') == (12.0, 0)
    assert wire.decode_pong(RS + '{"t":"pong","ts":-1.25e3,"n":7}') == (-1250.0, 7)


# -- decode_control: anything that is not valid protocol is None, and it never raises

_KINDS = [wire.FROM_CLIENT, wire.FROM_SERVER]
_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_JSON = st.recursive(
    _SCALARS, lambda inner: st.lists(inner) | st.dictionaries(st.text(max_size=8), inner)
)
_FIELDS = st.dictionaries(
    st.sampled_from(["t", "ts", "n", "v", "session", "token", "ack", "after_ms", "reason", "x"]),
    _SCALARS | st.sampled_from(["ping", "pong", "ack", "hello", "reconnect"]) | _JSON,
)


def _check_valid(obj: dict[str, Any] | None, kinds: frozenset[str]) -> None:
    """What every accepted frame guarantees to the code that acts on it."""
    if obj is None:
        return
    assert obj["t"] in kinds
    for value in obj.values():
        assert not isinstance(value, dict | list)
        if isinstance(value, float):
            assert math.isfinite(value)
        if isinstance(value, int) and not isinstance(value, bool):
            assert abs(value) < 2**53
        if isinstance(value, str):
            value.encode()  # no lone surrogate
    if obj["t"] in ("ping", "pong"):
        assert wire.is_number(obj["ts"])
    if "n" in obj or obj["t"] == "ack":
        assert wire.as_count(obj["n"]) == obj["n"]


@settings(max_examples=300)
@given(st.text(max_size=300), st.sampled_from(_KINDS))
def test_decode_control_never_raises_on_any_text(body: str, kinds: frozenset[str]) -> None:
    """Arbitrary text after RS is either a valid control object or None; never an exception."""
    _check_valid(wire.decode_control(RS + body, kinds), kinds)


@settings(max_examples=300)
@given(_FIELDS, st.sampled_from(_KINDS))
@example({"t": "hello", "n": False}, wire.FROM_SERVER)  # `n` is a count in every frame type
def test_decode_control_accepts_only_valid_protocol(
    fields: dict[str, Any], kinds: frozenset[str]
) -> None:
    """Any JSON object (NaN, huge, nested, mistyped values included) decodes to a frame that
    satisfies the protocol's types, or to None; never an exception."""
    text = RS + json.dumps(fields)  # json.dumps writes NaN/Infinity for non-finite floats
    _check_valid(wire.decode_control(text, kinds), kinds)


@given(st.integers(min_value=1, max_value=4000), st.sampled_from("[{"))
def test_deep_nesting_is_invalid_not_a_recursion_error(depth: int, opener: str) -> None:
    """Nesting is refused before parsing, however deep (the issue's 4 KB frame included)."""
    closer = "]" if opener == "[" else "}"
    inner = '"a":' if opener == "{" else ""
    text = RS + (opener + inner) * depth + "1" + closer * depth
    assert wire.decode_control(text, wire.FROM_CLIENT) is None


def test_the_4kb_frame_of_the_issue_is_invalid() -> None:
    """`RS + "["*2000 + "]"*2000` is invalid for both sides."""
    text = RS + "[" * 2000 + "]" * 2000
    assert wire.decode_control(text, wire.FROM_CLIENT) is None
    assert wire.decode_control(text, wire.FROM_SERVER) is None


@pytest.mark.parametrize(
    "text",
    [
        RS + '{"t":"ping","ts":NaN,"n":1}',
        RS + '{"t":"ping","ts":Infinity,"n":1}',
        RS + '{"t":"ping","ts":-Infinity,"n":1}',
        RS + '{"t":"ping","ts":1e999,"n":1}',
        RS + '{"t":"pong","ts":-1e400,"n":1}',
        RS + '{"t":"ping","ts":1,"n":1,"x":NaN}',
        RS + '{"t":"ping","ts":' + "1" * 17 + ',"n":1}',  # beyond 2**53
        RS + '{"t":"ping","ts":1.' + "0" * 40 + ',"n":1}',  # a 42-character literal
        RS + '{"t":"ack","n":' + "9" * 4000 + "}",
        RS + '{"t":"ack","n":-1}',
        RS + '{"t":"ack","n":1.0}',
        RS + '{"t":"ack","n":true}',
        RS + '{"t":"ack"}',
        RS + '{"t":"ping","n":1}',
        RS + '{"t":"ping","ts":"1","n":1}',
        RS + '{"t":"ping","ts":1,"n":1,"x":[]}',
        RS + '{"t":"ping","ts":1,"n":1,"x":"\\ud800"}',
        RS + '{"t":"ping","ts":1,"n":1,"x":"' + "y" * wire.CONTROL_MAX_CHARS + '"}',
        RS + '{"t":"ping","ts":1,"n":1,"x":"' + "[" * (wire.CONTROL_MAX_BRACKETS + 1) + '"}',
        RS + '{"t":"hello","v":1}',  # a server-only type
        RS + '{"t":"nope"}',
        RS + '{"t":1}',
        RS + "[]",
        RS + '"\\ud800"',
        RS,
    ],
)
def test_invalid_control_frames_from_a_client(text: str) -> None:
    """Non-finite, huge, mistyped, missing, nested, oversize and unknown: all None."""
    assert wire.decode_control(text, wire.FROM_CLIENT) is None
    assert wire.decode_pong(text) is None


@pytest.mark.parametrize(
    "text",
    [
        RS + '{"t":"hello","v":1,"session":"s","token":"k","interval":NaN}',
        RS + '{"t":"hello","v":1,"session":"s","token":"k","resumed":1}',
        RS + '{"t":"hello","v":1,"session":"s","token":"k","reason":5}',
        RS + '{"t":"hello","v":1,"session":"s","token":"\\udc00"}',
        RS + '{"t":"hello","v":1,"session":"s","token":"k","ack":-3}',
        RS + '{"t":"reconnect","after_ms":"5"}',
        RS + '{"t":"reconnect","after_ms":1e999}',
        RS + '{"t":"reconnect","reason":null}',
    ],
)
def test_invalid_control_frames_from_a_server(text: str) -> None:
    """The client's types are checked the same way."""
    assert wire.decode_control(text, wire.FROM_SERVER) is None


@given(
    st.sampled_from(["ping", "pong"]),
    st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53) + 1, 2**53 - 1),
    _N,
)
def test_valid_frames_round_trip(kind: str, ts: float, n: int) -> None:
    """Every finite ts and count we could write is read back as written, on both sides."""
    text = wire.encode_control(kind, ts=ts, n=n)
    for kinds in _KINDS:
        assert wire.decode_control(text, kinds) == {"t": kind, "ts": ts, "n": n}


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_never_written(value: float) -> None:
    """encode_control refuses NaN and Infinity (they are not JSON)."""
    with pytest.raises(ValueError):
        wire.encode_control("pong", ts=value, n=0)


@given(
    st.text(max_size=60) | st.builds(lambda f: RS + '{"t":"pong","ts":' + f, st.text(max_size=60))
)
def test_decode_pong_agrees_with_decode_control(text: str) -> None:
    """Whatever the fast pong path accepts, the full parser accepts with the same values."""
    pong = wire.decode_pong(text)
    if pong is not None:
        frame = wire.decode_control(text, wire.FROM_CLIENT)
        assert frame is not None and (frame["ts"], frame["n"]) == pong
