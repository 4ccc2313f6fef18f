"""Wire protocol v1: control frames, escaping and the `stabilizer*` query parameters."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

RS = "\x1e"
VERSION = 1

CONTROL_MAX_CHARS = 4096
"""A control frame longer than this (in characters, RS included) is invalid, unparsed."""
CONTROL_MAX_BRACKETS = 32
"""Valid control frames are flat JSON objects: more `{`/`[` than this (even inside strings) is
invalid, unparsed, so nesting never approaches the recursion limit."""
NUMBER_MAX_CHARS = 32
"""A JSON number literal longer than this is invalid (no float or int of ours needs more)."""
MAX_SAFE_INT = 2**53
"""Integers in control frames are below this in magnitude (exact in a JavaScript number)."""

FROM_CLIENT = frozenset({"ping", "pong", "ack"})
"""Control types a client may send."""
FROM_SERVER = frozenset({"hello", "ping", "pong", "ack", "reconnect"})
"""Control types a server may send."""

# Never emit NaN or Infinity: they are not JSON, and a browser's JSON.parse rejects the frame.
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def text_size(text: str) -> int:
    """UTF-8 length of `text`, encoding it only when it is not ASCII (the common case)."""
    return len(text) if text.isascii() else len(text.encode())


def encode_control(kind: str, **fields: Any) -> str:
    """A control frame: RS + compact JSON with `"t"` first. A non-finite number raises
    `ValueError` (callers pass only validated or finite values)."""
    return RS + _dumps({"t": kind, **fields})


def encode_ping(ts: int, n: int) -> str:
    """`encode_control("ping", ts=ts, n=n)` without the JSON encoder (one per session per
    heartbeat interval): the same bytes."""
    return f'{RS}{{"t":"ping","ts":{ts},"n":{n}}}'


_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?").fullmatch
_PONG_HEAD = RS + '{"t":"pong","ts":'
_PONG_HEAD_LEN = len(_PONG_HEAD)
_isfinite = math.isfinite


def decode_pong(text: str) -> tuple[float, int] | None:
    """`(ts, n)` of a pong in the canonical form every client of ours sends
    (`RS{"t":"pong","ts":<number>,"n":<int>}`), else None: then use `decode_control`."""
    if not text.startswith(_PONG_HEAD) or text[-1:] != "}" or len(text) > CONTROL_MAX_CHARS:
        return None
    ts_text, sep, n_text = text[_PONG_HEAD_LEN:-1].partition(',"n":')
    if not sep or not n_text.isdigit() or not n_text.isascii() or len(n_text) > 15:
        return None
    if len(ts_text) > NUMBER_MAX_CHARS or _JSON_NUMBER(ts_text) is None:
        return None
    ts = float(ts_text)
    if not _isfinite(ts) or (ts_text.lstrip("-").isdigit() and abs(ts) >= MAX_SAFE_INT):
        return None  # what `decode_control` would refuse: 1e999, or an integer beyond 2**53
    return ts, int(n_text)


class _Invalid(ValueError):
    """A JSON value that is valid JSON but not valid protocol (raised from a parse hook)."""


def _parse_int(literal: str) -> int:
    if len(literal) > NUMBER_MAX_CHARS:
        raise _Invalid
    value = int(literal)
    if not -MAX_SAFE_INT < value < MAX_SAFE_INT:
        raise _Invalid
    return value


def _parse_float(literal: str) -> float:
    if len(literal) > NUMBER_MAX_CHARS:
        raise _Invalid
    value = float(literal)
    if not _isfinite(value):  # 1e999
        raise _Invalid
    return value


def _parse_constant(literal: str) -> Any:
    raise _Invalid  # NaN, Infinity, -Infinity: not JSON


_loads = json.JSONDecoder(
    parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant
).decode


def _is_count(value: object) -> bool:
    return type(value) is int and value >= 0


def _is_finite(value: object) -> bool:
    # ints are bounded by `_parse_int` and floats finite by `_parse_float`
    return type(value) is int or type(value) is float


def _is_text(value: object) -> bool:
    return type(value) is str


def _is_optional_text(value: object) -> bool:
    return value is None or type(value) is str


def _is_bool(value: object) -> bool:
    return type(value) is bool


def _is_anything(value: object) -> bool:
    return True


# Per type: field -> (check, required). Fields not listed are allowed (newer peers may add
# some) but, like every value, must be scalars. The client judges `hello`'s `v`, `session`
# and `token` itself: a hello it cannot use is a protocol error (1002), not noise.
_SCHEMA: dict[str, dict[str, tuple[Callable[[object], bool], bool]]] = {
    "ping": {"ts": (_is_finite, True), "n": (_is_count, False)},
    "pong": {"ts": (_is_finite, True), "n": (_is_count, False)},
    "ack": {"n": (_is_count, True)},
    "reconnect": {"after_ms": (_is_finite, False), "reason": (_is_text, False)},
    "hello": {
        "v": (_is_anything, False),
        "session": (_is_anything, False),
        "token": (_is_anything, False),
        "interval": (_is_finite, False),
        "timeout": (_is_finite, False),
        "resumed": (_is_bool, False),
        "reason": (_is_optional_text, False),
        "ack": (_is_count, False),
    },
}


# Fields with one meaning in every frame type: checked wherever they appear, so code that
# reads `n` off any frame can rely on it being a count.
_COMMON: dict[str, Callable[[object], bool]] = {"n": _is_count}


def _unicode_ok(value: str) -> bool:
    """No lone surrogate (from a `\\ud800` escape): such a string cannot be encoded again."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def decode_control(text: str, kinds: frozenset[str]) -> dict[str, Any] | None:
    """Parse a control frame (text starting with one RS) of one of `kinds`; None if it is not
    valid protocol. Never raises.

    Valid means: at most `CONTROL_MAX_CHARS` characters and `CONTROL_MAX_BRACKETS` brackets,
    JSON (without NaN/Infinity, numbers at most `NUMBER_MAX_CHARS` long, integers below
    2**53 in magnitude), an object whose `"t"` is one of `kinds`, every value a scalar, and the
    type's fields of the right types (see `_SCHEMA`). The cost is linear in the frame's length.
    """
    if len(text) > CONTROL_MAX_CHARS:
        return None
    body = text[1:]
    if body.count("{") + body.count("[") > CONTROL_MAX_BRACKETS:
        return None
    try:
        obj = _loads(body)
    except (ValueError, RecursionError):  # _Invalid and JSONDecodeError are ValueErrors
        return None
    if type(obj) is not dict:
        return None
    kind = obj.get("t")
    if type(kind) is not str or kind not in kinds:
        return None
    schema = _SCHEMA[kind]
    escapes = "\\u" in body
    for name, value in obj.items():
        if type(value) is dict or type(value) is list:
            return None
        if escapes and type(value) is str and not _unicode_ok(value):
            return None
        rule = schema.get(name)
        if rule is not None:
            if not rule[0](value):
                return None
        elif name in _COMMON and not _COMMON[name](value):
            return None
    for name, (_check, required) in schema.items():
        if required and name not in obj:
            return None
    return obj


def server_frame_limit(max_message_size: int | None) -> int | None:
    """The largest message the server should read for our `max_message_size` (uvicorn's
    `ws_max_size`); None: no limit of ours.

    One byte more than our limit: app text of exactly the limit that starts with RS is escaped
    with one more RS on the wire, and a frame one byte over our limit still reaches the
    middleware, which closes with its own 1009 (logged and counted); the server refuses larger
    ones before reading them. Never below `CONTROL_MAX_CHARS`, so that a tiny limit does not
    cut control frames, which are not data.
    """
    if max_message_size is None:
        return None
    return max(max_message_size + 1, CONTROL_MAX_CHARS)


def escape(text: str) -> str:
    """App text that starts with RS gets one more, so it is never mistaken for control."""
    return RS + text if text[:1] == RS else text


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def as_count(value: object) -> int | None:
    """A non-negative frame count from a control field, or None."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53:
        return value
    return None


@dataclass(frozen=True)
class OptIn:
    """What the `stabilizer*` query parameters asked for."""

    opted_in: bool = False
    resume_token: str | None = None
    resume_ack: int | None = None
    ack_invalid: bool = False


_PREFIX = b"stabilizer"


def split_query(query_string: bytes) -> tuple[bytes, OptIn]:
    """Remove every `stabilizer*` parameter; return the rest unchanged and what they said."""
    if _PREFIX not in query_string:
        return query_string, OptIn()
    kept: list[bytes] = []
    opted = False
    token: str | None = None
    ack: int | None = None
    ack_invalid = False
    for part in query_string.split(b"&"):
        name, _, value = part.partition(b"=")
        if not name.startswith(_PREFIX):
            kept.append(part)
            continue
        try:
            text = unquote_plus(value.decode("latin-1"))
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes everything
            text = ""
        if name == b"stabilizer":
            opted = text not in ("0", "false", "")
        elif name == b"stabilizer_resume":
            token = text[:1024] or None
        elif name == b"stabilizer_ack":
            if text.isascii() and text.isdigit() and len(text) <= 15:
                ack = int(text)
            else:
                ack_invalid = True
    return b"&".join(kept), OptIn(opted, token, ack, ack_invalid)
