import hashlib
import re
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stabilizer_asgi.core.tokens import (
    MAX_GENERATION,
    MAX_TOKEN_LENGTH,
    TokenSigner,
    UnknownKeyError,
    after_resume,
    key_id,
    normalize_secret,
    spendable,
)
from stabilizer_asgi.exceptions import ConfigError, InvalidTokenError

KEY = b"k" * 32
OLD_KEY = b"o" * 32
SESSION = "AbC_d-9xYz0123456789ab"

session_ids = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
    min_size=1,
    max_size=64,
)
generations = st.integers(min_value=0, max_value=MAX_GENERATION)
keys = st.binary(min_size=1, max_size=64)


def _signed(session_id: str = SESSION, generation: int = 3) -> str:
    return TokenSigner([KEY]).sign(session_id, generation)


# --- signing and the token format ---


@given(session_ids, generations, keys)
def test_round_trip(session_id: str, generation: int, key: bytes) -> None:
    """A token verifies to the session id and generation it was signed for."""
    signer = TokenSigner([key])
    assert signer.verify(signer.sign(session_id, generation)) == (session_id, generation)


@given(session_ids, generations)
def test_token_is_url_safe(session_id: str, generation: int) -> None:
    """Tokens use only `A-Za-z0-9-_.`, so they go into a query string unescaped."""
    token = TokenSigner([KEY]).sign(session_id, generation)
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", token)
    assert len(token) <= MAX_TOKEN_LENGTH


def test_token_layout() -> None:
    """A token reads `session.generation.kid.mac` with the signing key's kid."""
    session_id, generation, kid, mac = _signed(SESSION, 7).split(".")
    assert (session_id, generation) == (SESSION, "7")
    assert kid == hashlib.sha256(KEY).hexdigest()[:8] == key_id(KEY)
    assert len(mac) == 43


def test_sign_is_deterministic_and_bound_to_its_inputs() -> None:
    """The same inputs give the same token; another generation or session gives another MAC."""
    assert _signed(SESSION, 1) == _signed(SESSION, 1)
    mac = _signed(SESSION, 1).rsplit(".", 1)[1]
    assert mac != _signed(SESSION, 2).rsplit(".", 1)[1]
    assert mac != _signed(SESSION + "a", 1).rsplit(".", 1)[1]


def test_other_key_gives_other_mac() -> None:
    """Two keys sign the same session differently, and neither verifies the other's token."""
    mine, theirs = TokenSigner([KEY]), TokenSigner([OLD_KEY])
    with pytest.raises(InvalidTokenError):
        theirs.verify(mine.sign(SESSION, 1))


def test_mac_cannot_be_moved_between_fields() -> None:
    """Re-splitting session/generation with the same MAC does not verify (unambiguous encoding)."""
    signer = TokenSigner([KEY])
    token = signer.sign("ab1", 23)
    _, _, kid, mac = token.split(".")
    with pytest.raises(InvalidTokenError):
        signer.verify(f"ab.123.{kid}.{mac}")
    with pytest.raises(InvalidTokenError):
        signer.verify(f"ab12.3.{kid}.{mac}")


@pytest.mark.parametrize(
    ("session_id", "generation"),
    [
        ("", 0),
        ("a.b", 0),
        ("a b", 0),
        ("a=", 0),
        ("é", 0),
        (SESSION, -1),
        (SESSION, MAX_GENERATION + 1),
        (SESSION, True),
        ("a" * MAX_TOKEN_LENGTH, 0),
    ],
)
def test_sign_rejects_bad_input(session_id: str, generation: int) -> None:
    """Signing a non-URL-safe or oversized session id, or a bad generation, raises ValueError."""
    with pytest.raises(ValueError):
        TokenSigner([KEY]).sign(session_id, generation)


# --- verification failures ---


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t + ".x.x", "4 or 5 dot-separated parts"),
        (lambda t: t.rsplit(".", 1)[0], "4 or 5 dot-separated parts"),
        (lambda t: t[:-1], "malformed signature"),
        (lambda t: t + "A", "malformed signature"),
        (lambda t: t[:-3] + "a+b", "malformed signature"),
        (lambda t: t.replace(".3.", ".-3."), "malformed generation"),
        (lambda t: t.replace(".3.", ".03."), "malformed generation"),
        (lambda t: t.replace(".3.", ".x."), "malformed generation"),
        (lambda t: t.replace(".3.", ". 3."), "malformed generation"),
        (lambda t: t.replace(".3.", ".٣."), "non-ASCII"),
        (lambda t: t.replace(".3.", f".{MAX_GENERATION + 1}."), "out of range"),
        (lambda t: t.replace(".3.", f".{10**30}."), "out of range"),
        (lambda t: "a=b" + t[len(SESSION) :], "malformed session id"),
        (lambda t: t[len(SESSION) :], "malformed session id"),
        (lambda t: t.replace(key_id(KEY), "0000000g"), "malformed key id"),
        (lambda t: t.replace(key_id(KEY), key_id(KEY).upper()), "malformed key id"),
        (lambda t: t.replace(key_id(KEY), key_id(OLD_KEY)), "unknown key"),
        (lambda t: t.replace(SESSION, SESSION[:-1] + "Q"), "does not match"),
        (lambda t: "x" * (MAX_TOKEN_LENGTH + 1), "too long"),
        (lambda t: t + "\n", "malformed signature"),
    ],
)
def test_verify_says_what_is_wrong(mutate: Callable[[str], str], message: str) -> None:
    """Each kind of bad token raises InvalidTokenError naming the problem."""
    with pytest.raises(InvalidTokenError, match=message):
        TokenSigner([KEY]).verify(mutate(_signed(SESSION, 3)))


@pytest.mark.parametrize("value", [None, 1, b"abc", ["a.b.c.d"], object()])
def test_verify_rejects_non_strings(value: object) -> None:
    """A token that is not a str raises InvalidTokenError, not TypeError."""
    with pytest.raises(InvalidTokenError, match="not a string"):
        TokenSigner([KEY]).verify(value)


def test_non_canonical_base64_is_rejected() -> None:
    """A MAC whose unused low bits are changed decodes to the same bytes but does not verify."""
    token = _signed()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    sibling = alphabet[last ^ 1]  # same top 4 bits: same 32 decoded bytes
    with pytest.raises(InvalidTokenError):
        TokenSigner([KEY]).verify(token[:-1] + sibling)


def test_errors_never_leak_token_or_key() -> None:
    """Exception messages carry neither the token nor any part of the key or MAC."""
    token = _signed()
    mac = token.rsplit(".", 1)[1]
    for bad in (token[:-1], token + "x", token.replace(SESSION, SESSION + "Z")):
        with pytest.raises(InvalidTokenError) as info:
            TokenSigner([KEY]).verify(bad)
        text = str(info.value)
        assert SESSION not in text and mac[:10] not in text and KEY.decode() not in text


@given(st.data())
def test_any_single_character_substitution_is_rejected(data: st.DataObject) -> None:
    """Changing any one character of a token to any other character makes it invalid."""
    token = _signed()
    index = data.draw(st.integers(0, len(token) - 1))
    char = data.draw(st.characters().filter(lambda c: c != token[index]))
    with pytest.raises(InvalidTokenError):
        TokenSigner([KEY]).verify(token[:index] + char + token[index + 1 :])


@given(st.data())
def test_any_single_character_deletion_or_insertion_is_rejected(data: st.DataObject) -> None:
    """Deleting or inserting one character anywhere in a token makes it invalid."""
    token = _signed()
    index = data.draw(st.integers(0, len(token)))
    if data.draw(st.booleans()) and index < len(token):
        tampered = token[:index] + token[index + 1 :]
    else:
        tampered = token[:index] + data.draw(st.characters()) + token[index:]
    with pytest.raises(InvalidTokenError):
        TokenSigner([KEY]).verify(tampered)


token_like = st.builds(
    lambda parts: ".".join(parts),
    st.lists(st.text(alphabet="abcdef0123456789AZ_-=+/ \x00é", max_size=50), max_size=6),
)


@given(st.one_of(st.text(max_size=600), token_like, st.binary(), st.integers(), st.none()))
def test_garbage_only_ever_raises_invalid_token(garbage: object) -> None:
    """Arbitrary input raises InvalidTokenError and nothing else."""
    with pytest.raises(InvalidTokenError):
        TokenSigner([KEY]).verify(garbage)


# --- keys and rotation ---


@given(session_ids, generations)
def test_rotation_old_key_verifies_new_key_signs(session_id: str, generation: int) -> None:
    """After rotation, tokens of the old key still verify and new tokens carry the new kid."""
    old_token = TokenSigner([OLD_KEY]).sign(session_id, generation)
    rotated = TokenSigner([KEY, OLD_KEY])
    assert rotated.verify(old_token) == (session_id, generation)
    new_token = rotated.sign(session_id, generation)
    assert new_token.split(".")[2] == key_id(KEY) == rotated.kid
    assert TokenSigner([KEY]).verify(new_token) == (session_id, generation)


def test_retired_key_no_longer_verifies() -> None:
    """Once the old key is dropped from the list, its tokens are rejected as unknown."""
    old_token = TokenSigner([OLD_KEY]).sign(SESSION, 1)
    with pytest.raises(UnknownKeyError, match="unknown key"):
        TokenSigner([KEY]).verify(old_token)


def test_a_bad_signature_under_a_known_key_is_not_an_unknown_key() -> None:
    """A token whose key id is ours but whose tag is wrong is tampered, not foreign."""
    token = TokenSigner([KEY]).sign(SESSION, 1)
    forged = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    with pytest.raises(InvalidTokenError) as info:
        TokenSigner([KEY]).verify(forged)
    assert not isinstance(info.value, UnknownKeyError)


def test_key_ids_lists_signing_key_first_without_duplicates() -> None:
    """`key_ids` names each distinct key once, the signing key first."""
    signer = TokenSigner([KEY, OLD_KEY, KEY])
    assert signer.key_ids == [key_id(KEY), key_id(OLD_KEY)]


@pytest.mark.parametrize("bad", [[], [b""], [KEY, b""], ["text"], KEY, "text", None])
def test_signer_rejects_bad_keys(bad: object) -> None:
    """A signer needs a non-empty sequence of non-empty bytes keys."""
    with pytest.raises(ConfigError) as info:
        TokenSigner(bad)  # type: ignore[arg-type]
    assert info.value.field == "secret"
    assert "text" not in str(info.value) and KEY.decode() not in str(info.value)


# --- normalize_secret ---


def test_normalize_none_generates_a_random_key() -> None:
    """No secret gives one fresh random 32-byte key, flagged as generated."""
    (first,), generated = normalize_secret(None)
    (second,), _ = normalize_secret(None)
    assert generated is True
    assert len(first) == 32 and first != second


@pytest.mark.parametrize(
    ("secret", "expected"),
    [
        ("pässword", [b"p\xc3\xa4ssword"]),
        (b"raw", [b"raw"]),
        (bytearray(b"raw"), [b"raw"]),
        (["new", b"old"], [b"new", b"old"]),
        (("new",), [b"new"]),
    ],
)
def test_normalize_given_secret(secret: object, expected: list[bytes]) -> None:
    """str keys are UTF-8 encoded, bytes kept, order preserved, generated=False."""
    assert normalize_secret(secret) == (expected, False)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("secret", "shown"),
    [
        ("", "<empty str>"),
        (b"", "<empty bytes>"),
        ([], "<0 keys>"),
        (["hunter2", ""], "<2 keys>"),
        (["hunter2", 5], "<2 keys>"),
        (12345, "<int>"),
    ],
)
def test_normalize_rejects_empty_without_leaking(secret: object, shown: str) -> None:
    """An empty or ill-typed secret raises ConfigError with a redacted value, never the secret."""
    with pytest.raises(ConfigError) as info:
        normalize_secret(secret)  # type: ignore[arg-type]
    assert info.value.field == "secret"
    assert info.value.value == shown
    assert "hunter2" not in str(info.value) and "12345" not in str(info.value)
    assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------- which generation is spendable


class _Tokens:
    """The manager's per-session token bookkeeping, driven by the pure functions."""

    def __init__(self) -> None:
        self.generation = 0
        self.confirmed = True

    def resume(self, presented: int) -> bool:
        if not spendable(self.generation, self.confirmed, presented):
            return False
        self.generation = after_resume(self.generation, presented)
        self.confirmed = False
        return True

    def frame_from_client(self) -> None:
        self.confirmed = True


def test_a_fresh_session_accepts_only_its_current_token() -> None:
    """Generation 0 with nothing resumed yet: only token 0 resumes; no earlier one exists."""
    tokens = _Tokens()
    assert not spendable(0, True, -1) and not spendable(0, True, 1)
    assert tokens.resume(0) and tokens.generation == 1


def test_a_lost_hello_leaves_the_spent_token_good_for_a_retry() -> None:
    """After a resume whose hello never arrived, the token just spent resumes again and the
    retry is given the same new token (the generation does not move)."""
    tokens = _Tokens()
    assert tokens.resume(0) and tokens.generation == 1  # hello(token 1) lost
    assert tokens.resume(0) and tokens.generation == 1  # retry with token 0: same token 1
    assert tokens.resume(0) and tokens.generation == 1  # lost again: still fine


def test_a_frame_on_the_resumed_connection_spends_the_previous_token() -> None:
    """Once the client sent a frame on the resumed connection, only the new token resumes."""
    tokens = _Tokens()
    assert tokens.resume(0)
    tokens.frame_from_client()
    assert not tokens.resume(0)
    assert tokens.resume(1) and tokens.generation == 2


def test_spending_the_new_token_retires_the_one_before() -> None:
    """A client that read hello but sent nothing resumes with the new token; the token before
    it never works again, and the new one is the retry candidate."""
    tokens = _Tokens()
    assert tokens.resume(0) and tokens.generation == 1
    assert tokens.resume(1) and tokens.generation == 2
    assert not tokens.resume(0)
    assert tokens.resume(1) and tokens.generation == 2
    tokens.frame_from_client()
    assert not tokens.resume(1) and tokens.resume(2)


def test_no_token_older_than_the_previous_one_is_spendable() -> None:
    """Only the current and, unconfirmed, the one just before it: never two back or ahead."""
    for generation in (1, 5, 100):
        assert spendable(generation, False, generation - 1)
        assert not spendable(generation, False, generation - 2)
        assert not spendable(generation, False, generation + 1)
        assert not spendable(generation, True, generation - 1)


def test_a_cluster_token_names_its_node_and_the_tag_covers_it() -> None:
    """A token signed with a node verifies to that node; moving it to another node breaks it."""
    signer = TokenSigner([KEY])
    token = signer.sign(SESSION, 3, "node-a")
    assert token.count(".") == 4
    assert signer.verify_node(token) == (SESSION, 3, "node-a")
    assert signer.verify(token) == (SESSION, 3)
    with pytest.raises(InvalidTokenError, match="does not match"):
        signer.verify_node(token.replace(".node-a.", ".node-b."))
    with pytest.raises(InvalidTokenError, match="malformed node"):
        signer.verify_node(token.replace(".node-a.", ".no de."))
    plain = signer.sign(SESSION, 3)
    assert signer.verify_node(plain) == (SESSION, 3, "")
    # Without a node, the token is exactly what it was before nodes existed.
    assert plain.count(".") == 3
