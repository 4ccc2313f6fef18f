from __future__ import annotations

import json

import pytest
from hypothesis import given
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
