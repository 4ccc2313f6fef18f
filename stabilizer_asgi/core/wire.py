"""Wire protocol v1: control frames, escaping and the `stabilizer*` query parameters."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

RS = "\x1e"
VERSION = 1
_MAX_CONTROL = 4096
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def text_size(text: str) -> int:
    """UTF-8 length of `text`, encoding it only when it is not ASCII (the common case)."""
    return len(text) if text.isascii() else len(text.encode())


def encode_control(kind: str, **fields: Any) -> str:
    """A control frame: RS + compact JSON with `"t"` first."""
    return RS + _dumps({"t": kind, **fields})


def encode_ping(ts: int, n: int) -> str:
    """`encode_control("ping", ts=ts, n=n)` without the JSON encoder (one per session per
    heartbeat interval): the same bytes."""
    return f'{RS}{{"t":"ping","ts":{ts},"n":{n}}}'


_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?").fullmatch
_PONG_HEAD = RS + '{"t":"pong","ts":'
_PONG_HEAD_LEN = len(_PONG_HEAD)


def decode_pong(text: str) -> tuple[float, int] | None:
    """`(ts, n)` of a pong in the canonical form every client of ours sends
    (`RS{"t":"pong","ts":<number>,"n":<int>}`), else None: then use `decode_control`."""
    if not text.startswith(_PONG_HEAD) or text[-1:] != "}":
        return None
    ts_text, sep, n_text = text[_PONG_HEAD_LEN:-1].partition(',"n":')
    if not sep or not n_text.isdigit() or not n_text.isascii() or len(n_text) > 15:
        return None
    if _JSON_NUMBER(ts_text) is None:
        return None
    return float(ts_text), int(n_text)


def decode_control(text: str) -> dict[str, Any] | None:
    """Parse a control frame (text starting with one RS); None if it is malformed."""
    if len(text) > _MAX_CONTROL:
        return None
    try:
        obj = json.loads(text[1:])
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("t"), str):
        return None
    return obj


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
