"""Malformed tokens: the verifier's only outcomes are TokenInvalid or TokenExpired.

A token is untrusted input from the network: whatever it holds (characters outside the
compact-JWS alphabet, lone surrogates, bytes, deeply nested or oversized JSON behind a
valid signature), verification must end in :class:`TokenInvalid` (close 3500) or
:class:`TokenExpired` (error 109), never in another exception (which the session maps
to error 100 ``temporary``: the SDK would retry the same token forever). Both decoders
are fuzzed: our HMAC compact-JWS code (``auth/hmac_jws.py``) and PyJWT (public keys).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from realtime_server.app import Running
from realtime_server.auth.keys import load_keys
from realtime_server.auth.tokens import TokenExpired, TokenInvalid, TokenVerifier

from .conftest import ws_url
from .helpers import RawClient, token

NOW = 1_700_000_000.0
SECRET = "fuzz-secret-" + "k" * 52
_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_RSA_PUBLIC = (
    _RSA.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)

HMAC_VERIFIER = TokenVerifier(load_keys(SECRET, None, "HS256,HS384,HS512"))
RSA_VERIFIER = TokenVerifier(load_keys(None, _RSA_PUBLIC, "RS256"))
STRICT_HMAC = TokenVerifier(
    load_keys(SECRET, None, "HS256"), audience="realtime", issuer="https://app.example"
)
VERIFIERS = (HMAC_VERIFIER, RSA_VERIFIER, STRICT_HMAC)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _good_claims() -> dict[str, Any]:
    return {"sub": "42", "iat": int(NOW), "exp": int(NOW) + 600}


def _hs256(header: bytes, payload: bytes) -> str:
    signing_input = f"{_b64(header)}.{_b64(payload)}"
    signature = hmac.digest(SECRET.encode(), signing_input.encode(), hashlib.sha256)
    return f"{signing_input}.{_b64(signature)}"


def _rs256(header: bytes, payload: bytes) -> str:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    signing_input = f"{_b64(header)}.{_b64(payload)}"
    signature = _RSA.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64(signature)}"


GOOD_HS = _hs256(b'{"alg":"HS256","typ":"JWT"}', orjson.dumps(_good_claims()))
GOOD_RS = _rs256(b'{"alg":"RS256","typ":"JWT"}', orjson.dumps(_good_claims()))


def _outcome(verifier: TokenVerifier, raw: object) -> None:
    """Both kinds of verification; anything but the two token errors fails the test."""
    for verify in (verifier.verify_connection, verifier.verify_subscription):
        with contextlib.suppress(TokenInvalid, TokenExpired):
            verify(raw, NOW)


# Any character, lone surrogates included (U+D800-U+DFFF cannot even be encoded).
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=300)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
CLAIM_NAMES = st.sampled_from(
    ["sub", "exp", "iat", "nbf", "jti", "info", "channels", "channel", "aud", "iss"]
)
CLAIMS = st.dictionaries(CLAIM_NAMES | st.text(max_size=6), JSON_VALUES, max_size=8)


def test_zero_width_space_is_invalid_not_an_internal_error() -> None:
    """The report of issue 11: U+200B in a token raised UnicodeEncodeError."""
    head, body, sig = GOOD_HS.split(".")
    for broken in (
        f"{head}.{body}\u200b.{sig}",
        f"{head}\u200b.{body}.{sig}",
        f"{head}.{body}.{sig}\u200b",
        f"{head}.{body[:5]}\ud800{body[5:]}.{sig}",
        GOOD_HS + "\u00e9",
    ):
        for verifier in (HMAC_VERIFIER, STRICT_HMAC):
            with pytest.raises(TokenInvalid):
                verifier.verify_connection(broken, NOW)
    head, body, sig = GOOD_RS.split(".")
    for broken in (f"{head}.{body}\u200b.{sig}", f"{head}.{body}.\ud800{sig}"):
        with pytest.raises(TokenInvalid):
            RSA_VERIFIER.verify_connection(broken, NOW)


@FUZZ
@given(ANY_TEXT)
def test_arbitrary_text(raw: str) -> None:
    for verifier in VERIFIERS:
        _outcome(verifier, raw)


@FUZZ
@given(st.binary(max_size=300), st.sampled_from([bytes, bytearray, memoryview]))
def test_bytes_like_values(raw: bytes, kind: type) -> None:
    for verifier in VERIFIERS:
        _outcome(verifier, kind(raw))
        _outcome(verifier, raw.decode("latin-1"))


@FUZZ
@given(st.integers(0, 400), st.characters(codec=None, exclude_categories=()), st.booleans())
def test_one_character_put_into_a_valid_token(at: int, char: str, replace: bool) -> None:
    for good, verifier in ((GOOD_HS, HMAC_VERIFIER), (GOOD_RS, RSA_VERIFIER)):
        i = at % (len(good) + 1)
        raw = good[:i] + char + good[i + 1 if replace else i :]
        _outcome(verifier, raw)


@FUZZ
@given(ANY_TEXT, ANY_TEXT, ANY_TEXT)
def test_three_arbitrary_segments(head: str, body: str, sig: str) -> None:
    for verifier in VERIFIERS:
        _outcome(verifier, f"{head}.{body}.{sig}")


@FUZZ
@given(st.binary(max_size=200), st.binary(max_size=400))
def test_signed_arbitrary_bytes(header: bytes, payload: bytes) -> None:
    """A valid signature over any header and payload bytes (what a key holder could
    send): still only the two outcomes."""
    _outcome(HMAC_VERIFIER, _hs256(header, payload))
    _outcome(STRICT_HMAC, _hs256(header, payload))
    _outcome(RSA_VERIFIER, _rs256(header, payload))


@FUZZ
@given(CLAIMS, st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=3))
def test_signed_arbitrary_claims(claims: dict[str, Any], extra_header: dict[str, Any]) -> None:
    """Well-formed, correctly signed tokens with claims of any shape and size (numbers
    beyond 64 bits and beyond a double included)."""
    # Python's json writes integers of any size (orjson stops at 64 bits).
    hs_header = json.dumps({**extra_header, "alg": "HS256"}).encode()
    rs_header = json.dumps({**extra_header, "alg": "RS256"}).encode()
    payload = json.dumps(claims).encode()
    _outcome(HMAC_VERIFIER, _hs256(hs_header, payload))
    _outcome(STRICT_HMAC, _hs256(hs_header, payload))
    _outcome(RSA_VERIFIER, _rs256(rs_header, payload))


@pytest.mark.parametrize(
    "payload",
    [
        b'{"sub":"42","exp":1' + b"0" * 400 + b"}",  # beyond a double
        b'{"sub":"42","exp":1e999}',  # infinity once parsed
        b'{"sub":"42","exp":1700000600,"info":' + b"1" * 40 + b"}",  # beyond 64 bits
        b'{"sub":"42","exp":1700000600,"info":' + b"[" * 2000 + b"]" * 2000 + b"}",  # deep
        b'{"sub":"42","exp":1700000600,"jti":"\\ud800"}',  # a lone surrogate, escaped
        b'{"sub":"42","exp":NaN}',
        b"\xff\xfe{}",
    ],
)
def test_signed_hostile_payloads(payload: bytes) -> None:
    for verifier, signed in (
        (HMAC_VERIFIER, _hs256(b'{"alg":"HS256"}', payload)),
        (RSA_VERIFIER, _rs256(b'{"alg":"RS256"}', payload)),
    ):
        _outcome(verifier, signed)


async def test_zero_width_space_closes_3500_over_the_wire(server: Running) -> None:
    """End to end: close 3500 "invalid token", not error 100 (which the SDK retries)."""
    head, body, sig = token("42").split(".")
    client = await RawClient.open(ws_url(server))
    await client.send({"id": 1, "connect": {"token": f"{head}.{body}\u200b.{sig}"}})
    assert await client.closed() == (3500, "invalid token")


def test_pyjwt_rejects_what_we_reject_too() -> None:
    """Sanity: the reference library refuses the zero-width-space token as well."""
    head, body, sig = GOOD_HS.split(".")
    with pytest.raises(Exception):  # noqa: B017 - any refusal; PyJWT's kind varies
        jwt.decode(f"{head}.{body}\u200b.{sig}", SECRET, algorithms=["HS256"])
