"""Reconnect tokens: HMAC-signed ``(session id, generation)`` pairs, with key rotation.

A token reads ``"{session_id}.{generation}.{kid}.{mac}"``: the session id (URL-safe base64), the
session's token generation in decimal, the id of the signing key (first 8 hex digits of its
SHA-256) and the HMAC-SHA256 tag in unpadded URL-safe base64. In cluster mode a token also names
the node that issued it (the one holding the session), as a third part:
``"{session_id}.{generation}.{node}.{kid}.{mac}"``, so any node can ask that one for the session
(or tell that it died). The node is covered by the tag. Every character is in
``A-Za-z0-9-_.``, so a token travels in a query string as is.

This module signs and verifies, and decides which generations a resume may spend
(`spendable`, `after_resume`); the manager stores each session's generation and whether the
client has confirmed its latest token, and enforces expiry (it stores when the session was
detached).

Single use, and the one exception. A token is spent when a resume with it is accepted: the
generation moves on and the resumed connection's `hello` carries the next token. That `hello`
can be lost — the connection drops before the client reads it — and the client's retry then
carries the only token it has, the one just spent. So the previous generation stays spendable
until the client proves it holds the new one (any frame from it on the resumed connection), and
a retry with it resumes the session again and is sent the same new token. It never lets two
connections hold the session: like any resume, it takes the session over from the connection
it was resumed on, which is closed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence

from ..exceptions import ConfigError, InvalidTokenError

MAX_TOKEN_LENGTH = 512
"""Longer input is rejected before any parsing."""

MAX_GENERATION = 2**63 - 1
"""Largest generation a token can carry (it is MACed as 8 unsigned big-endian bytes)."""

GENERATED_KEY_BYTES = 32

_SECRET_ALLOWED = "a non-empty str/bytes or a non-empty sequence of them"
# Versioned domain separation: a tag made for another purpose (or a later token format) with the
# same key can never verify as a v1 reconnect token.
_MAC_PREFIX = b"stabilizer-asgi/reconnect-token/v1\x00"
_MAC_TEXT_LENGTH = 43  # 32 bytes in unpadded base64
_MAX_GENERATION_DIGITS = len(str(MAX_GENERATION))

_SESSION_ID = re.compile(r"[A-Za-z0-9_-]+")
_GENERATION = re.compile(r"0|[1-9][0-9]*")
_KID = re.compile(r"[0-9a-f]{8}")
_NODE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MAC_TEXT = re.compile(r"[A-Za-z0-9_-]+")


class UnknownKeyError(InvalidTokenError):
    """A well-formed token whose key id is not one of ours: signed by another process's key
    (a restart or another worker without a shared `secret`, a retired key). The server cannot
    know such a session, so a resume answers `unknown`, not `invalid`. A forger can pick any
    key id and get the same answer, which tells them nothing: the outcome (a new session) is
    the same as for `invalid`."""


def key_id(key: bytes) -> str:
    """The public id of a key: the first 8 hex digits of its SHA-256 (safe to log)."""
    return hashlib.sha256(key).hexdigest()[:8]


def _redacted(secret: object) -> str:
    # ConfigError puts the value in its message; a secret must never reach a log line.
    if isinstance(secret, (str, bytes, bytearray)):
        kind = type(secret).__name__
        return f"<empty {kind}>" if not secret else f"<{kind} of length {len(secret)}>"
    if isinstance(secret, Sequence):
        return f"<{len(secret)} key{'s' if len(secret) != 1 else ''}>"
    return f"<{type(secret).__name__}>"


def _as_key(item: object) -> bytes | None:
    if isinstance(item, str):
        return item.encode("utf-8") or None
    if isinstance(item, (bytes, bytearray)):
        return bytes(item) or None
    return None


def normalize_secret(
    secret: str | bytes | Sequence[str | bytes] | None,
) -> tuple[list[bytes], bool]:
    """Turn the ``secret`` setting into key bytes: ``(keys, generated)``.

    ``None`` yields one random 32-byte key and ``generated=True`` (tokens then only verify in this
    process, which the caller should log as a warning). ``str`` keys are UTF-8 encoded. The first
    key signs; all of them verify.
    """
    if secret is None:
        return [secrets.token_bytes(GENERATED_KEY_BYTES)], True
    single = _as_key(secret)
    if single is not None:
        return [single], False
    if isinstance(secret, Sequence) and not isinstance(secret, (str, bytes, bytearray)):
        keys = [_as_key(item) for item in secret]
        if keys and all(key is not None for key in keys):
            return [key for key in keys if key is not None], False
    raise ConfigError("secret", _redacted(secret), _SECRET_ALLOWED)


class TokenSigner:
    """Signs and verifies reconnect tokens; the first key signs, every key verifies."""

    __slots__ = ("_kid", "_signing", "_verifying")

    def __init__(self, keys: Sequence[bytes]) -> None:
        if isinstance(keys, (str, bytes, bytearray)) or not isinstance(keys, Sequence):
            raise ConfigError("secret", _redacted(keys), _SECRET_ALLOWED)
        if not keys or not all(isinstance(key, bytes) and key for key in keys):
            raise ConfigError("secret", _redacted(keys), _SECRET_ALLOWED)
        # Keyed HMAC objects are prepared once; copying one is cheaper than re-keying.
        self._verifying: dict[str, list[hmac.HMAC]] = {}
        seen: set[bytes] = set()
        for key in keys:
            if key in seen:
                continue
            seen.add(key)
            # Two distinct keys may share a 32-bit kid; verify then tries each of them.
            self._verifying.setdefault(key_id(key), []).append(
                hmac.new(key, _MAC_PREFIX, hashlib.sha256)
            )
        self._kid = key_id(keys[0])
        self._signing = self._verifying[self._kid][0]

    @property
    def kid(self) -> str:
        """The id of the signing key (safe to log)."""
        return self._kid

    @property
    def key_ids(self) -> list[str]:
        """The ids of all verifying keys, signing key first."""
        return list(self._verifying)

    def sign(self, session_id: str, generation: int, node: str = "") -> str:
        """A token for ``session_id`` at ``generation`` issued by ``node`` (cluster mode; ""
        leaves it out); raises ``ValueError`` on bad input."""
        if not isinstance(session_id, str) or not _SESSION_ID.fullmatch(session_id):
            raise ValueError("session_id must be a non-empty URL-safe base64 string")
        if (
            not isinstance(generation, int)
            or isinstance(generation, bool)
            or not 0 <= generation <= MAX_GENERATION
        ):
            raise ValueError(f"generation must be an int in [0, {MAX_GENERATION}]")
        if node and not _NODE.fullmatch(node):
            raise ValueError("node must be 1-64 characters of A-Za-z0-9_-")
        mac = _mac_text(self._signing, session_id, generation, self._kid, node)
        middle = f"{node}.{self._kid}" if node else self._kid
        token = f"{session_id}.{generation}.{middle}.{mac}"
        if len(token) > MAX_TOKEN_LENGTH:
            raise ValueError("session_id is too long to fit in a token")
        return token

    def verify(self, token: object) -> tuple[str, int]:
        """``(session_id, generation)`` of a genuine token; else ``InvalidTokenError``.

        Never raises anything else, whatever the input."""
        session_id, generation, _node = self.verify_node(token)
        return session_id, generation

    def verify_node(self, token: object) -> tuple[str, int, str]:
        """``(session_id, generation, node)`` of a genuine token (node "" when it names none);
        else ``InvalidTokenError``.

        Never raises anything else, whatever the input. Error messages say what is wrong, never
        the token or a key.
        """
        if not isinstance(token, str):
            raise InvalidTokenError("token is not a string")
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidTokenError("token is too long")
        if not token.isascii():
            raise InvalidTokenError("token contains non-ASCII characters")
        parts = token.split(".")
        if len(parts) == 5:
            session_id, generation_text, node, kid, mac = parts
            if not _NODE.fullmatch(node):
                raise InvalidTokenError("token has a malformed node")
        elif len(parts) == 4:
            session_id, generation_text, kid, mac = parts
            node = ""
        else:
            raise InvalidTokenError("token does not have 4 or 5 dot-separated parts")
        if not _SESSION_ID.fullmatch(session_id):
            raise InvalidTokenError("token has a malformed session id")
        if not _GENERATION.fullmatch(generation_text):
            raise InvalidTokenError("token has a malformed generation")
        if len(generation_text) > _MAX_GENERATION_DIGITS:
            raise InvalidTokenError("token generation is out of range")
        generation = int(generation_text)
        if generation > MAX_GENERATION:
            raise InvalidTokenError("token generation is out of range")
        if not _KID.fullmatch(kid):
            raise InvalidTokenError("token has a malformed key id")
        candidates = self._verifying.get(kid)
        if candidates is None:
            raise UnknownKeyError("token is signed by an unknown key")
        if len(mac) != _MAC_TEXT_LENGTH or not _MAC_TEXT.fullmatch(mac):
            raise InvalidTokenError("token has a malformed signature")
        given = mac.encode("ascii")
        # Comparing the canonical text (not decoded bytes) also rejects the non-canonical
        # encodings whose spare low bits would otherwise let a one-character change verify.
        for keyed in candidates:
            expected = _mac_text(keyed, session_id, generation, kid, node).encode("ascii")
            if hmac.compare_digest(expected, given):
                return session_id, generation, node
        raise InvalidTokenError("token signature does not match")


def spendable(generation: int, confirmed: bool, presented: int) -> bool:
    """Whether a token of generation `presented` may resume a session now at `generation`.

    The current token always; the previous one while the client has not `confirmed` that it got
    the current one (the `hello` that carried it may have been lost).
    """
    return presented == generation or (not confirmed and presented == generation - 1)


def after_resume(generation: int, presented: int) -> int:
    """The session's generation once a resume with a spendable `presented` token is accepted.

    Spending the current token moves the generation on; a retry with the previous one leaves it,
    so the client is sent the same new token that its lost `hello` carried. Either way the new
    generation is unconfirmed until the client sends a frame on the resumed connection.
    """
    return generation + 1 if presented == generation else generation


def _mac_text(keyed: hmac.HMAC, session_id: str, generation: int, kid: str, node: str) -> str:
    raw_id = session_id.encode("ascii")
    mac = keyed.copy()
    # Length-prefixed and fixed-width fields: no two (session, generation, kid, node) share an
    # input. A token without a node is MACed exactly as before nodes existed.
    mac.update(len(raw_id).to_bytes(2, "big"))
    mac.update(raw_id)
    mac.update(generation.to_bytes(8, "big"))
    mac.update(kid.encode("ascii"))
    if node:
        raw_node = node.encode("ascii")
        mac.update(b"\x00node")
        mac.update(len(raw_node).to_bytes(2, "big"))
        mac.update(raw_node)
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode("ascii")
