"""The seed's reconnect tokens: single use, `reconnect_token_ttl` long, for any client id.

They are not the native resume tokens (which name a session and carry its replay): a seed
token only says "this client id was given a token here". The store is bounded: past
`max_reconnect_tokens` the oldest outstanding token is forgotten (it then fails as unknown,
never the other way round), and tokens expired for more than `EXPIRED_GRACE` are swept.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict

from .exceptions import InvalidTokenError, TokenExpiredError

# Seconds an expired token is still answered "expired" rather than "unknown" (the seed's
# cleanup ran every 5 minutes, with the same effect).
EXPIRED_GRACE = 300.0


class TokenStore:
    """Outstanding tokens by nonce, oldest first."""

    __slots__ = ("_key", "_limit", "_tokens")

    def __init__(self, limit: int) -> None:
        self._key = secrets.token_bytes(32)
        self._limit = limit
        # nonce -> (client id, monotonic expiry); issued in order with one TTL at a time, so
        # the oldest entry is (nearly always) the first to expire.
        self._tokens: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tokens)

    def issue(self, client_id: str, ttl: float) -> str:
        """A token for `client_id`: `<issued>.<nonce>.<client id, base64url>.<hmac>`."""
        now = time.monotonic()
        tokens = self._tokens
        while tokens:
            nonce, (_, expires) = next(iter(tokens.items()))
            if expires + EXPIRED_GRACE > now and len(tokens) < self._limit:
                break
            del tokens[nonce]
        nonce = secrets.token_hex(16)
        encoded = base64.urlsafe_b64encode(client_id.encode()).decode().rstrip("=")
        body = f"{int(time.time())}.{nonce}.{encoded}"
        tokens[nonce] = (client_id, now + ttl)
        return f"{body}.{self._sign(body)}"

    def redeem(self, token: object) -> str:
        """The client id of a valid token, which is used up; raises otherwise."""
        parts = token.split(".") if isinstance(token, str) else []
        if len(parts) != 4:
            raise InvalidTokenError("Token format invalid")
        body = ".".join(parts[:3])
        if not hmac.compare_digest(parts[3], self._sign(body)):
            raise InvalidTokenError("Token signature invalid")
        entry = self._tokens.pop(parts[1], None)
        if entry is None:
            raise InvalidTokenError("Token not found or already used")
        client_id, expires = entry
        if time.monotonic() > expires:
            raise TokenExpiredError("Token has expired")
        try:
            padded = parts[2] + "=" * (-len(parts[2]) % 4)
            if base64.urlsafe_b64decode(padded).decode() != client_id:
                raise InvalidTokenError("Token signature invalid")
        except (binascii.Error, UnicodeDecodeError) as exc:  # pragma: no cover - signed above
            raise InvalidTokenError("Token format invalid") from exc
        return client_id

    def _sign(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()
