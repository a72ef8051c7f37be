"""The HMAC compact-JWS decoder (auth/hmac_jws.py) that replaced PyJWT on the HS path.

Two kinds of checks: it accepts what PyJWT accepts for well-formed tokens (differential,
over many payloads and all three HS algorithms), and it refuses the malformed and
hostile spellings listed in its docstring, each with a fixed message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
from typing import Any

import jwt
import orjson
import pytest

from realtime_server.auth.hmac_jws import HMAC_DIGESTS, MalformedToken, decode_hmac_jws
from realtime_server.auth.keys import load_keys
from realtime_server.auth.tokens import TokenInvalid, TokenVerifier

KEY = b"k" * 64
ALL = dict(HMAC_DIGESTS)
HS256 = {"HS256": "sha256"}
NOW = 1_700_000_000.0


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def sign(
    header: dict[str, Any] | bytes, payload: dict[str, Any] | bytes, *, digest: str = "sha256"
) -> str:
    head = b64url(header if isinstance(header, bytes) else orjson.dumps(header))
    body = b64url(payload if isinstance(payload, bytes) else orjson.dumps(payload))
    mac = hmac.new(KEY, f"{head}.{body}".encode(), getattr(hashlib, digest)).digest()
    return f"{head}.{body}.{b64url(mac)}"


def refused(token: str, digests: dict[str, str] = ALL) -> str:
    with pytest.raises(MalformedToken) as info:
        decode_hmac_jws(token, KEY, digests)
    message = str(info.value)
    for part in token.split("."):
        if len(part) > 8:
            assert part not in message
    return message


def _random_payload(rng: random.Random) -> dict[str, Any]:
    payload: dict[str, Any] = {"sub": str(rng.randrange(10**9)), "exp": rng.randrange(10**10)}
    for _ in range(rng.randrange(6)):
        key = "".join(rng.choice("abcxyz_") for _ in range(rng.randrange(1, 8)))
        payload[key] = rng.choice(
            [rng.random(), "é" * rng.randrange(5), [1, "two", None], {"n": {"m": True}}, None]
        )
    return payload


@pytest.mark.parametrize("alg", sorted(HMAC_DIGESTS))
def test_same_result_as_pyjwt(alg: str) -> None:
    rng = random.Random(alg)
    for _ in range(300):
        payload = _random_payload(rng)
        headers = rng.choice([None, {"kid": "k1"}, {"typ": "at+jwt", "x": [1]}])
        token = jwt.encode(payload, KEY, algorithm=alg, headers=headers)
        header, got = decode_hmac_jws(token, KEY, ALL)
        expected = jwt.decode_complete(token, KEY, algorithms=[alg], options={"verify_exp": False})
        assert got == expected["payload"] == payload
        assert header == expected["header"]


@pytest.mark.parametrize("alg", sorted(HMAC_DIGESTS))
def test_every_single_character_change_is_refused(alg: str) -> None:
    token = jwt.encode({"sub": "42", "exp": 1}, KEY, algorithm=alg)
    alphabet = "ABab09-_.=+/ "
    for i in range(len(token)):
        for ch in alphabet:
            if token[i] == ch:
                continue
            with pytest.raises(MalformedToken):
                decode_hmac_jws(token[:i] + ch + token[i + 1 :], KEY, ALL)


def test_wrong_key_is_refused() -> None:
    token = jwt.encode({"sub": "42"}, b"x" * 64, algorithm="HS256")
    assert refused(token) == "bad signature or malformed token"


@pytest.mark.parametrize(
    "alg", ["none", "None", "NONE", "hs256", "HS256 ", "RS256", "ES256", "EdDSA", "", None, 256]
)
def test_algorithms_outside_the_allow_list(alg: object) -> None:
    token = sign({"alg": alg, "typ": "JWT"}, {"sub": "42"})
    assert refused(token) == "algorithm not allowed"


def test_alg_must_be_in_the_callers_list() -> None:
    token = sign({"alg": "HS512"}, {"sub": "42"}, digest="sha512")
    assert decode_hmac_jws(token, KEY, ALL)[1] == {"sub": "42"}
    assert refused(token, HS256) == "algorithm not allowed"


def test_unsigned_token_is_refused() -> None:
    unsigned = jwt.encode({"sub": "42"}, None, algorithm="none")
    assert refused(unsigned) == "algorithm not allowed"
    head, body, _ = sign({"alg": "HS256"}, {"sub": "42"}).split(".")
    assert refused(f"{head}.{body}.") == "bad signature or malformed token"


@pytest.mark.parametrize("count", [1, 2, 4, 5])
def test_segment_count(count: int) -> None:
    token = sign({"alg": "HS256"}, {"sub": "42"})
    parts = token.split(".")
    spelled = ".".join((parts * 2)[:count])
    refused(spelled)


def test_padding_and_whitespace_are_refused() -> None:
    token = sign({"alg": "HS256"}, {"sub": "42", "x": "y"})  # segments needing padding
    head, body, sig = token.split(".")
    assert len(sig) % 4 and len(body) % 4
    for bad in (
        f"{head}.{body}.{sig}=",
        f"{head}.{body}={'=' * (-len(body) % 4)}.{sig}",
        f" {token}",
        f"{token}\n",
        f"{head}.{body}.{sig[:10]} {sig[10:]}",
    ):
        refused(bad)


def test_standard_alphabet_is_refused() -> None:
    # Find a token whose signature needs a '-' or '_' and spell it with '+' or '/'.
    for n in range(200):
        token = sign({"alg": "HS256"}, {"sub": str(n)})
        if "-" in token or "_" in token:
            refused(token.replace("-", "+").replace("_", "/"))
            return
    raise AssertionError("no token with '-' or '_' found")


def test_non_canonical_signature_is_refused() -> None:
    """HS256: 32 bytes = 43 characters; the last one carries 2 unused bits."""
    token = sign({"alg": "HS256"}, {"sub": "42"})
    head, body, sig = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    index = alphabet.index(sig[-1])
    assert index & 0b11 == 0
    for low in (1, 2, 3):
        respelled = f"{head}.{body}.{sig[:-1]}{alphabet[index | low]}"
        assert base64.urlsafe_b64decode(respelled.split(".")[2] + "=") == base64.urlsafe_b64decode(
            sig + "="
        )
        refused(respelled)


@pytest.mark.parametrize("header", [b"[]", b'"HS256"', b"null", b"{", b'{"alg":"HS256"', b"\xff"])
def test_header_must_be_a_json_object(header: bytes) -> None:
    assert refused(sign(header, {"sub": "42"})) in {"malformed header"}


@pytest.mark.parametrize("payload", [b"[]", b'"x"', b"1", b"{", b"NaN", b'{"exp":1e400}'])
def test_payload_must_be_a_json_object(payload: bytes) -> None:
    assert refused(sign({"alg": "HS256"}, payload)) == "malformed claims"


def test_payload_is_parsed_only_after_the_signature() -> None:
    head, body, _ = sign({"alg": "HS256"}, b"[not json").split(".")
    forged = f"{head}.{body}.{b64url(b'x' * 32)}"
    assert refused(forged) == "bad signature or malformed token"


def test_crit_is_refused() -> None:
    token = sign({"alg": "HS256", "crit": ["exp"]}, {"sub": "42"})
    assert refused(token) == "unsupported critical header"


@pytest.mark.parametrize("b64", [False, 0, "false", None])
def test_unencoded_payload_is_refused(b64: object) -> None:
    assert refused(sign({"alg": "HS256", "b64": b64}, {"sub": "42"})) != ""


def test_b64_true_is_accepted() -> None:
    assert decode_hmac_jws(sign({"alg": "HS256", "b64": True}, {"a": 1}), KEY, ALL)[1] == {"a": 1}


@pytest.mark.parametrize("kid", [1, ["k"], {"k": 1}])
def test_kid_must_be_a_string(kid: object) -> None:
    assert refused(sign({"alg": "HS256", "kid": kid}, {"sub": "42"})) == "malformed header"


def test_non_ascii_token_is_refused() -> None:
    token = sign({"alg": "HS256"}, {"sub": "42"})
    refused(token[:-1] + "é")
    refused("é" + token[1:])


# --- through TokenVerifier ---------------------------------------------------------------


def verifier(**kwargs: Any) -> TokenVerifier:
    return TokenVerifier(load_keys(KEY.decode(), None, "HS256"), **kwargs)


def test_verifier_maps_refusals_to_token_invalid() -> None:
    with pytest.raises(TokenInvalid, match="algorithm not allowed"):
        verifier().verify_connection(jwt.encode({"sub": "1"}, None, algorithm="none"), NOW)
    with pytest.raises(TokenInvalid, match="unsupported critical header"):
        token = sign({"alg": "HS256", "crit": ["x"]}, {"sub": "1", "exp": NOW + 60})
        verifier().verify_connection(token, NOW)


@pytest.mark.parametrize(
    ("aud", "message"),
    [
        (None, "missing aud claim"),
        ("", "missing aud claim"),
        ([], "missing aud claim"),
        ("other", "wrong audience"),
        (["other", 1], "wrong audience"),
        ({"realtime": 1}, "wrong audience"),
        (7, "wrong audience"),
    ],
)
def test_audience_refusals(aud: object, message: str) -> None:
    payload: dict[str, Any] = {"sub": "1", "exp": NOW + 60}
    if aud is not None:
        payload["aud"] = aud
    with pytest.raises(TokenInvalid, match=message):
        verifier(audience="realtime").verify_connection(sign({"alg": "HS256"}, payload), NOW)


@pytest.mark.parametrize(
    ("iss", "message"),
    [(None, "missing iss claim"), ("https://evil.example", "wrong issuer"), (1, "wrong issuer")],
)
def test_issuer_refusals(iss: object, message: str) -> None:
    payload: dict[str, Any] = {"sub": "1", "exp": NOW + 60}
    if iss is not None:
        payload["iss"] = iss
    with pytest.raises(TokenInvalid, match=message):
        verifier(issuer="https://app.example").verify_connection(
            sign({"alg": "HS256"}, payload), NOW
        )


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
@pytest.mark.parametrize("number", ["1e400", "-1e400", str(10**400)])
def test_numbers_beyond_a_double_are_refused(claim: str, number: str) -> None:
    others = {"sub": "1", "exp": NOW + 60}
    others.pop(claim, None)
    body = orjson.dumps(others)[:-1] + f',"{claim}":{number}}}'.encode()
    with pytest.raises(TokenInvalid):
        verifier().verify_connection(sign({"alg": "HS256"}, body), NOW)


@pytest.mark.parametrize("digest", sorted(set(HMAC_DIGESTS.values())))
def test_precomputed_hmac_is_hmac(digest: str) -> None:
    """The verifier's HMAC from the key's precomputed states (``_hmac``) is RFC 2104's,
    for keys shorter than, as long as and longer than the hash's block, and messages of
    any length; computed twice with the same states, it does not drift."""
    from realtime_server.auth.hmac_jws import _hmac

    rng = random.Random(digest)
    block = hashlib.new(digest).block_size
    for size in (0, 1, 32, block - 1, block, block + 1, 3 * block):
        key = rng.randbytes(size)
        for length in (0, 1, 55, 56, 64, 200, 1000):
            message = rng.randbytes(length)
            expected = hmac.digest(key, message, digest)
            assert _hmac(key, message, digest) == expected
            assert _hmac(key, message, digest) == expected
