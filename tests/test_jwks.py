"""Key sets (auth/jwks.py), key configuration with a key set (auth/keys.py) and token
verification against a key set (auth/tokens.py), without the network: the verifier is
given a key source holding a parsed set. Key confusion attempts are here."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from realtime_server.auth.jwks import (
    JwksError,
    JwkSet,
    KeyMismatch,
    UnknownKid,
    check_jwks_url,
    parse_jwks,
)
from realtime_server.auth.keys import load_keys
from realtime_server.auth.tokens import (
    KeysUnavailable,
    TokenExpired,
    TokenInvalid,
    TokenVerifier,
    UnknownKey,
)
from realtime_server.errors import ConfigError

from .jwks_helpers import Signer, ec_signer, ed_signer, key_set, rsa_signer

URL = "https://idp.example.com/.well-known/jwks.json"
SECRET = "s3cret-" + "k" * 57


class Source:
    """A key source holding a set; counts refetch requests."""

    def __init__(self, keys: JwkSet | None, after_refetch: JwkSet | None = None) -> None:
        self.current = keys
        self.after_refetch = after_refetch
        self.refetches = 0

    async def refetch_unknown(self) -> bool:
        self.refetches += 1
        if self.after_refetch is None:
            return False
        self.current = self.after_refetch
        return True


def _parse(*signers: Signer, **document: Any) -> JwkSet:
    doc = key_set(*signers)
    doc.update(document)
    return parse_jwks(orjson.dumps(doc))


def verifier(
    keys: JwkSet | None,
    *,
    secret: str | None = None,
    algorithms: str | None = None,
    source: Source | None = None,
) -> TokenVerifier:
    config = load_keys(secret, None, algorithms, URL)
    return TokenVerifier(config, source=source or Source(keys))


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forge_hs256(header: dict[str, Any], claims: dict[str, Any], key: bytes) -> str:
    head = b64url(orjson.dumps(header))
    body = b64url(orjson.dumps(claims))
    sig = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


def claims(user: str = "42") -> dict[str, Any]:
    now = int(time.time())
    return {"sub": user, "iat": now, "exp": now + 600}


# --- parsing ------------------------------------------------------------------------------


def test_parses_rsa_ec_and_ed25519_keys_with_their_algorithms() -> None:
    keys = _parse(rsa_signer("r"), ec_signer("e"), ed_signer("d"))
    assert keys.kids == ("r", "e", "d")
    by_kid = {k.kid: k.algorithms for k in keys.keys}
    assert by_kid["r"] == {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
    assert by_kid["e"] == {"ES256"}
    assert by_kid["d"] == {"EdDSA"}
    p384 = _parse(ec_signer("p", ec.SECP384R1()))
    assert p384.keys[0].algorithms == {"ES384"}


def test_a_key_naming_alg_serves_that_algorithm_only() -> None:
    signer = rsa_signer("r")
    signer.extra = {"alg": "PS256"}
    assert _parse(signer).keys[0].algorithms == {"PS256"}


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ({"use": "enc"}, "use enc"),
        ({"key_ops": ["encrypt"]}, "key_ops"),
        ({"alg": "ES256"}, "does not fit"),  # an RSA key claiming an EC algorithm
        ({"alg": "HS256"}, "does not fit"),
        ({"alg": "none"}, "does not fit"),
        ({"kty": "oct", "k": b64url(b"shared-secret")}, "key type oct"),
        ({"kty": "oct"}, "key type oct"),
        ({"n": b64url((1 << 1023).to_bytes(128, "big") + b"\x01")[:-2]}, ""),
        ({"e": "not base64!"}, "malformed e"),
        ({"kid": 7}, "malformed kid"),
    ],
)
def test_unusable_keys_are_skipped_with_a_reason(extra: dict[str, Any], why: str) -> None:
    bad = rsa_signer("bad")
    bad.extra = extra
    keys = _parse(ec_signer("good"), bad)
    assert keys.kids == ("good",)
    assert len(keys.skipped) == 1 and why in keys.skipped[0]


def test_short_rsa_keys_are_skipped() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - on purpose
    short = Signer(weak, "RS256", "s")
    with pytest.raises(JwksError, match="2048"):
        _parse(short)


def test_an_ec_key_off_its_curve_is_skipped() -> None:
    signer = ec_signer("e")
    jwk = signer.jwk()
    signer.extra = {"y": jwk["x"]}  # (x, x) is not a point of P-256
    with pytest.raises(JwksError, match="no usable key"):
        _parse(signer)


def test_private_members_are_ignored_and_only_the_public_key_is_built() -> None:
    signer = ec_signer("e")
    private = signer.private
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    signer.extra = {"d": b64url(private.private_numbers().private_value.to_bytes(32, "big"))}
    key = _parse(signer).keys[0].key
    assert isinstance(key, ec.EllipticCurvePublicKey)


def test_the_allow_list_applies_to_the_set() -> None:
    doc = orjson.dumps(key_set(rsa_signer("r"), ec_signer("e")))
    keys = parse_jwks(doc, {"ES256"})
    assert keys.kids == ("e",)
    assert "no allowed algorithm" in keys.skipped[0]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<html>",
        b"[]",
        b'{"keys": {}}',
        b'{"keys": []}',
        b'{"kty": "RSA"}',
        orjson.dumps({"keys": [{"kty": "RSA"}] * 101}),
    ],
)
def test_documents_that_are_not_usable_key_sets_are_refused(body: bytes) -> None:
    with pytest.raises(JwksError):
        parse_jwks(body)


def test_find_by_kid_and_by_algorithm() -> None:
    rs, es = rsa_signer("r"), ec_signer("e")
    keys = _parse(rs, es)
    assert keys.find("r", "PS256").kid == "r"
    with pytest.raises(UnknownKid):
        keys.find("nope", "RS256")
    with pytest.raises(KeyMismatch):
        keys.find("e", "RS256")  # an RS token whose kid points at the EC key
    assert keys.find(None, "ES256").kid == "e"  # exactly one key serves ES256
    two_rsa = _parse(rsa_signer("r1"), rsa_signer("r2", fresh=True))
    with pytest.raises(KeyMismatch):
        two_rsa.find(None, "RS256")  # two keys fit: a token without kid is refused


@pytest.mark.parametrize(
    "url",
    [
        "http://idp.example.com/jwks.json",
        "ftp://idp.example.com/jwks.json",
        "https://user:pw@idp.example.com/jwks.json",
        "https:///jwks.json",
        "http://10.0.0.1/jwks.json",
        "https://idp.example.com:99999/jwks.json",
    ],
)
def test_jwks_url_https_only_except_loopback(url: str) -> None:
    with pytest.raises(ConfigError, match="REALTIME_JWT_JWKS_URL") as info:
        check_jwks_url(url)
    assert "pw" not in str(info.value)


def test_loopback_urls_may_use_http() -> None:
    for url in ("http://127.0.0.1:8080/j", "http://localhost/j", "http://[::1]:1/j"):
        assert check_jwks_url(url)


# --- keys configuration -----------------------------------------------------------------


def test_key_set_default_algorithms() -> None:
    assert load_keys(None, None, None, URL).allowed == ("RS256", "PS256", "ES256", "EdDSA")
    both = load_keys(SECRET, None, None, URL)
    assert both.algorithms == ("HS256",) and both.secret == SECRET.encode()
    assert both.jwks_algorithms == ("RS256", "PS256", "ES256", "EdDSA")
    assert SECRET not in repr(both)


@pytest.mark.parametrize(
    ("secret", "algorithms", "words"),
    [
        (None, "HS256,RS256", "needs REALTIME_JWT_SECRET"),
        (SECRET, "RS256", "no HS* algorithm"),
        (SECRET, "HS256", "no RS*/PS*/ES*/EdDSA"),
        (None, "RS256,none", "never allowed"),
        (None, "ES256K", "unknown"),
    ],
)
def test_key_set_algorithm_lists(secret: str | None, algorithms: str, words: str) -> None:
    with pytest.raises(ConfigError, match="REALTIME_JWT_ALGORITHMS") as info:
        load_keys(secret, None, algorithms, URL)
    assert words in str(info.value)


def test_public_key_and_key_set_are_exclusive() -> None:
    pem = (
        rsa_signer()
        .private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    with pytest.raises(ConfigError, match="REALTIME_JWT_JWKS_URL"):
        load_keys(None, pem, None, URL)


# --- verification -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "signer",
    [
        pytest.param(rsa_signer("r"), id="RS256"),
        pytest.param(rsa_signer("r", alg="PS256"), id="PS256"),
        pytest.param(ec_signer("e"), id="ES256"),
        pytest.param(ed_signer("d"), id="EdDSA"),
    ],
)
def test_tokens_of_each_algorithm_verify(signer: Signer) -> None:
    v = verifier(_parse(signer))
    assert v.verify_connection(signer.sign("7"), time.time()).sub == "7"


def test_secret_and_key_set_together_each_for_its_own_algorithms() -> None:
    rs = rsa_signer("r")
    v = verifier(_parse(rs), secret=SECRET)
    now = time.time()
    assert v.verify_connection(rs.sign("a"), now).sub == "a"
    hs = jwt.encode(claims("b"), SECRET, algorithm="HS256")
    assert v.verify_connection(hs, now).sub == "b"
    with pytest.raises(TokenInvalid, match="algorithm not allowed"):
        v.verify_connection(jwt.encode(claims(), SECRET, algorithm="HS512"), now)


def test_allow_list_pins_algorithms_even_for_keys_of_the_set() -> None:
    rs = rsa_signer("r")
    v = verifier(_parse(rs), algorithms="ES256,RS256")
    with pytest.raises(TokenInvalid, match="algorithm not allowed"):
        v.verify_connection(rs.sign(alg="PS256"), time.time())
    with pytest.raises(TokenInvalid, match="algorithm not allowed"):
        v.verify_connection(rs.sign(alg="RS512"), time.time())


def test_key_whose_alg_is_rs256_refuses_ps256_tokens() -> None:
    rs = rsa_signer("r")
    rs.extra = {"alg": "RS256"}
    v = verifier(_parse(rs))
    with pytest.raises(TokenInvalid, match="does not serve"):
        v.verify_connection(rs.sign(alg="PS256"), time.time())


def test_hs256_token_signed_with_a_jwks_public_key_is_refused() -> None:
    rs, es = rsa_signer("r"), ec_signer("e")
    keys = _parse(rs, es)
    for signer in (rs, es):
        public = signer.private.public_key()
        pem = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        jwk_json = orjson.dumps(signer.jwk())
        for material in (pem, jwk_json, orjson.dumps(signer.jwk()["x" if signer is es else "n"])):
            forged = forge_hs256({"alg": "HS256", "kid": signer.kid}, claims(), material)
            # Without a secret: HS256 is not allowed at all.
            with pytest.raises(TokenInvalid, match="algorithm not allowed"):
                verifier(keys).verify_connection(forged, time.time())
            # With a secret: checked with the secret only, never with the key's bytes.
            with pytest.raises(TokenInvalid, match="bad signature"):
                verifier(keys, secret=SECRET).verify_connection(forged, time.time())


def test_rs_token_whose_kid_points_at_an_ec_key_is_refused() -> None:
    attacker = rsa_signer("e", fresh=True)  # the EC key's kid, the attacker's RSA key
    v = verifier(_parse(ec_signer("e")))
    with pytest.raises(TokenInvalid, match="does not serve"):
        v.verify_connection(attacker.sign(), time.time())


def test_alg_none_is_refused() -> None:
    token = jwt.encode(claims(), None, algorithm="none", headers={"kid": "r"})
    for secret in (None, SECRET):
        with pytest.raises(TokenInvalid, match="algorithm not allowed"):
            verifier(_parse(rsa_signer("r")), secret=secret).verify_connection(token, time.time())


@pytest.mark.parametrize("member", ["jku", "x5u", "jwk", "x5c"])
def test_key_headers_pointing_at_the_attackers_key_are_never_used(member: str) -> None:
    legit = rsa_signer("r")
    attacker = Signer(rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256", "r")
    value: Any = {
        "jku": "http://127.0.0.1:9/attacker.json",
        "x5u": "http://127.0.0.1:9/attacker.pem",
        "jwk": attacker.jwk(),
        "x5c": ["MIIB" + "A" * 64],
    }[member]
    token = attacker.sign(headers={member: value})
    source = Source(_parse(legit))
    v = verifier(None, source=source)
    with pytest.raises(TokenInvalid, match="bad signature"):
        v.verify_connection(token, time.time())
    # Without kid, the attacker's embedded key still does not count.
    attacker.kid = None
    with pytest.raises(TokenInvalid):
        v.verify_connection(attacker.sign(headers={member: value}), time.time())
    assert source.refetches == 0


def test_token_without_kid_needs_exactly_one_fitting_key() -> None:
    rs = rsa_signer(None)
    es = ec_signer("e")
    v = verifier(_parse(Signer(rs.private, "RS256", "r"), es))
    assert v.verify_connection(rs.sign(), time.time()).sub == "42"
    two = verifier(_parse(Signer(rs.private, "RS256", "r"), rsa_signer("r2", fresh=True)))
    with pytest.raises(TokenInvalid, match="no single key"):
        two.verify_connection(rs.sign(), time.time())


def test_non_string_kid_is_malformed() -> None:
    rs = rsa_signer("r")
    _, body, sig = rs.sign().split(".")
    head = b64url(orjson.dumps({"alg": "RS256", "kid": 5}))
    with pytest.raises(TokenInvalid, match="malformed header"):
        verifier(_parse(rs)).verify_connection(f"{head}.{body}.{sig}", time.time())


def test_no_key_set_yet_is_temporary_for_asymmetric_tokens_only() -> None:
    v = verifier(None, secret=SECRET)
    with pytest.raises(KeysUnavailable):
        v.verify_connection(rsa_signer("r").sign(), time.time())
    hs = jwt.encode(claims("h"), SECRET, algorithm="HS256")
    assert v.verify_connection(hs, time.time()).sub == "h"


def test_unknown_kid_is_invalid_and_a_refetch_is_asked_once() -> None:
    old, new = rsa_signer("old"), ec_signer("new")
    source = Source(_parse(old), after_refetch=_parse(old, new))
    v = verifier(None, source=source)
    with pytest.raises(UnknownKey):
        v.verify_connection(new.sign(), time.time())
    assert source.refetches == 0  # the pure path never asks

    async def go() -> None:
        claims_ = await v.verify_connection_fresh(new.sign("n"), time.time())
        assert claims_.sub == "n" and source.refetches == 1
        source.after_refetch = None
        with pytest.raises(UnknownKey):
            await v.verify_connection_fresh(ec_signer("made-up").sign(), time.time())
        assert source.refetches == 2

    asyncio.run(go())


def test_subscription_tokens_verify_with_the_set_too() -> None:
    es = ec_signer("e")
    v = verifier(_parse(es))
    token = es.sign("42", channel="document:1")
    assert v.verify_subscription(token, time.time()).channel == "document:1"


def test_expired_jwks_token_is_expired_not_invalid() -> None:
    es = ec_signer("e")
    with pytest.raises(TokenExpired):
        verifier(_parse(es)).verify_connection(es.sign(ttl=-60), time.time())


def test_wrong_curve_signature_is_refused() -> None:
    p256 = ec_signer("e")
    other = Signer(ec.generate_private_key(ec.SECP256R1()), "ES256", "e")
    with pytest.raises(TokenInvalid, match="bad signature"):
        verifier(_parse(p256)).verify_connection(other.sign(), time.time())
