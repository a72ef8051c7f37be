"""Unit tests of key loading (auth/keys.py) and token verification (auth/tokens.py).

Keys are generated here with ``cryptography``; no private key ever touches the disk.
Time is injected (``now``), never read from the clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import traceback
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from realtime_server.auth import tokens
from realtime_server.auth.keys import KeySet, load_keys
from realtime_server.auth.tokens import (
    ConnectionClaims,
    SubscriptionClaims,
    TokenExpired,
    TokenInvalid,
    TokenVerifier,
)
from realtime_server.errors import ConfigError

NOW = 1_700_000_000.0
SECRET = "s3cret-" + "k" * 57  # 64 bytes: long enough for HS512 without key-length warnings
OTHER_SECRET = "other-" + "x" * 58


SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class KeyPair:
    private: SigningKey
    public_pem: str


def _public_pem(private: SigningKey) -> str:
    public: bytes = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return public.decode()


@pytest.fixture(scope="module")
def rsa_pair() -> KeyPair:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return KeyPair(private, _public_pem(private))


@pytest.fixture(scope="module")
def other_rsa_pair() -> KeyPair:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return KeyPair(private, _public_pem(private))


@pytest.fixture(scope="module")
def ec_pair() -> KeyPair:
    private = ec.generate_private_key(ec.SECP256R1())
    return KeyPair(private, _public_pem(private))


@pytest.fixture(scope="module")
def ed_pair() -> KeyPair:
    private = ed25519.Ed25519PrivateKey.generate()
    return KeyPair(private, _public_pem(private))


def claims(**overrides: Any) -> dict[str, Any]:
    """A valid connection payload at NOW; ``None`` removes a claim."""
    payload: dict[str, Any] = {"sub": "42", "iat": int(NOW), "exp": int(NOW) + 3600}
    for key, value in overrides.items():
        if value is None:
            payload.pop(key, None)
        else:
            payload[key] = value
    return payload


def hs(payload: dict[str, Any], *, secret: str = SECRET, alg: str = "HS256", **kw: Any) -> str:
    return jwt.encode(payload, secret, algorithm=alg, **kw)


def hs_verifier(algorithms: str | None = None, **kwargs: Any) -> TokenVerifier:
    return TokenVerifier(load_keys(SECRET, None, algorithms), **kwargs)


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forge_hs256(
    payload: dict[str, Any], secret: bytes, header: dict[str, Any] | None = None
) -> str:
    """An HS256 token built by hand (PyJWT refuses to sign with a PEM as HMAC secret)."""
    head = b64url(orjson.dumps(header or {"alg": "HS256", "typ": "JWT"}))
    body = b64url(orjson.dumps(payload))
    signing_input = f"{head}.{body}".encode()
    return f"{head}.{body}.{b64url(hmac.new(secret, signing_input, hashlib.sha256).digest())}"


# --- keys -------------------------------------------------------------------------------


def test_secret_defaults_to_hs256() -> None:
    keys = load_keys(SECRET, None, None)
    assert keys.algorithms == ("HS256",)
    assert keys.is_hmac


def test_secret_with_an_hmac_list() -> None:
    assert load_keys(SECRET, None, " HS256, HS512 ").algorithms == ("HS256", "HS512")


def test_keyset_repr_hides_the_secret() -> None:
    keys = load_keys(SECRET, None, None)
    assert SECRET not in repr(keys)
    assert SECRET not in str(keys)


def test_rsa_public_key_defaults_to_rs256(rsa_pair: KeyPair) -> None:
    keys = load_keys(None, rsa_pair.public_pem, None)
    assert keys.algorithms == ("RS256",)
    assert not keys.is_hmac


def test_ec_public_key_defaults_to_es256(ec_pair: KeyPair) -> None:
    assert load_keys(None, ec_pair.public_pem, None).algorithms == ("ES256",)


def test_ed25519_public_key_defaults_to_eddsa(ed_pair: KeyPair) -> None:
    assert load_keys(None, ed_pair.public_pem, None).algorithms == ("EdDSA",)


def test_public_key_from_path(ec_pair: KeyPair, tmp_path: Path) -> None:
    path = tmp_path / "jwt-public.pem"  # a public key only
    path.write_text(ec_pair.public_pem)
    assert load_keys(None, f"@{path}", "ES256").algorithms == ("ES256",)


@pytest.mark.parametrize(
    ("secret", "algorithms"),
    [
        pytest.param(True, "HS256,RS256", id="hmac+rsa"),
        pytest.param(True, "RS256", id="rsa-with-secret"),
        pytest.param(True, "HS256,none", id="hmac+none"),
        pytest.param(True, "none", id="none"),
        pytest.param(True, "NONE", id="NONE"),
        pytest.param(True, "HS999", id="unknown"),
        pytest.param(True, " , ", id="empty-list"),
        pytest.param(False, "RS256,ES256", id="rsa+ec"),
        pytest.param(False, "RS256,HS256", id="rsa+hmac"),
        pytest.param(False, "ES256", id="ec-with-rsa-key"),
        pytest.param(False, "EdDSA", id="eddsa-with-rsa-key"),
        pytest.param(False, "RS256,none", id="rsa+none"),
    ],
)
def test_algorithm_list_must_be_one_family(
    secret: bool, algorithms: str, rsa_pair: KeyPair
) -> None:
    with pytest.raises(ConfigError) as info:
        if secret:
            load_keys(SECRET, None, algorithms)
        else:
            load_keys(None, rsa_pair.public_pem, algorithms)
    assert "REALTIME_JWT_ALGORITHMS" in str(info.value)
    assert SECRET not in str(info.value)


def test_no_key_at_all() -> None:
    with pytest.raises(ConfigError, match="REALTIME_JWT_SECRET"):
        load_keys(None, None, None)


def test_both_key_kinds(rsa_pair: KeyPair) -> None:
    with pytest.raises(ConfigError) as info:
        load_keys(SECRET, rsa_pair.public_pem, None)
    assert "REALTIME_JWT_PUBLIC_KEY" in str(info.value)
    assert SECRET not in str(info.value)


def test_private_key_is_not_a_public_key(rsa_pair: KeyPair) -> None:
    private_pem = rsa_pair.private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    with pytest.raises(ConfigError, match="REALTIME_JWT_PUBLIC_KEY") as info:
        load_keys(None, private_pem, None)
    assert "PRIVATE KEY" not in str(info.value)


@pytest.mark.parametrize("value", ["not a pem", "-----BEGIN PUBLIC KEY-----\nxx\n"])
def test_garbage_public_key(value: str) -> None:
    with pytest.raises(ConfigError, match="REALTIME_JWT_PUBLIC_KEY"):
        load_keys(None, value, None)


def test_missing_public_key_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="REALTIME_JWT_PUBLIC_KEY"):
        load_keys(None, f"@{tmp_path / 'absent.pem'}", None)


# --- algorithms -------------------------------------------------------------------------


def test_valid_hs256_connection_token() -> None:
    payload = claims(jti="t-1", info={"name": "Ann"}, channels=["document:1", "document:1"])
    got = hs_verifier().verify_connection(hs(payload), NOW)
    assert got == ConnectionClaims(
        sub="42",
        exp=NOW + 3600,
        iat=NOW,
        jti="t-1",
        info=orjson.dumps({"name": "Ann"}),
        channels=("document:1",),
    )


def test_minimal_connection_token() -> None:
    got = hs_verifier().verify_connection(hs(claims(iat=None)), NOW)
    assert (got.sub, got.iat, got.jti, got.info, got.channels) == ("42", None, None, None, ())


def test_none_algorithm_is_refused() -> None:
    unsigned = jwt.encode(claims(), "", algorithm="none")
    with pytest.raises(TokenInvalid):
        hs_verifier().verify_connection(unsigned, NOW)
    # also with a forged signature segment
    with pytest.raises(TokenInvalid):
        hs_verifier().verify_connection(unsigned + "c2ln", NOW)


def test_algorithm_outside_the_allow_list_is_refused() -> None:
    token = hs(claims(), alg="HS512")
    with pytest.raises(TokenInvalid):
        hs_verifier("HS256").verify_connection(token, NOW)
    assert hs_verifier("HS256,HS512").verify_connection(token, NOW).sub == "42"


def test_header_alg_cannot_be_swapped() -> None:
    """An HS512 signature relabelled HS256 does not verify."""
    _head, body, sig = hs(claims(), alg="HS512").split(".")
    relabelled = b64url(orjson.dumps({"alg": "HS256", "typ": "JWT"}))
    with pytest.raises(TokenInvalid):
        hs_verifier("HS256,HS512").verify_connection(f"{relabelled}.{body}.{sig}", NOW)


@pytest.mark.parametrize(
    ("pair_name", "alg"),
    [("rsa_pair", "RS256"), ("ec_pair", "ES256"), ("ed_pair", "EdDSA")],
)
def test_public_key_tokens(pair_name: str, alg: str, request: pytest.FixtureRequest) -> None:
    pair: KeyPair = request.getfixturevalue(pair_name)
    verifier = TokenVerifier(load_keys(None, pair.public_pem, alg))
    token = jwt.encode(claims(), pair.private, algorithm=alg)
    assert verifier.verify_connection(token, NOW).sub == "42"


def test_rsa_key_from_path(rsa_pair: KeyPair, tmp_path: Path) -> None:
    path = tmp_path / "rsa-public.pem"
    path.write_text(rsa_pair.public_pem)
    verifier = TokenVerifier(load_keys(None, f"@{path}", None))
    token = jwt.encode(claims(), rsa_pair.private, algorithm="RS256")
    assert verifier.verify_connection(token, NOW).sub == "42"


def test_rsa_server_refuses_hs_tokens(rsa_pair: KeyPair) -> None:
    verifier = TokenVerifier(load_keys(None, rsa_pair.public_pem, None))
    with pytest.raises(TokenInvalid):
        verifier.verify_connection(hs(claims()), NOW)


def test_rsa_public_key_as_hmac_secret_is_refused(rsa_pair: KeyPair) -> None:
    """The classic key-confusion attack: HS256 signed with the server's public key PEM."""
    verifier = TokenVerifier(load_keys(None, rsa_pair.public_pem, "RS256,RS384,RS512"))
    for secret in (rsa_pair.public_pem.encode(), rsa_pair.public_pem.strip().encode()):
        with pytest.raises(TokenInvalid):
            verifier.verify_connection(forge_hs256(claims(), secret), NOW)


def test_ec_public_key_as_hmac_secret_is_refused(ec_pair: KeyPair) -> None:
    verifier = TokenVerifier(load_keys(None, ec_pair.public_pem, None))
    with pytest.raises(TokenInvalid):
        verifier.verify_connection(forge_hs256(claims(), ec_pair.public_pem.encode()), NOW)


def test_hmac_server_refuses_public_key_tokens(rsa_pair: KeyPair, ec_pair: KeyPair) -> None:
    verifier = hs_verifier("HS256,HS384,HS512")
    for token in (
        jwt.encode(claims(), rsa_pair.private, algorithm="RS256"),
        jwt.encode(claims(), ec_pair.private, algorithm="ES256"),
    ):
        with pytest.raises(TokenInvalid):
            verifier.verify_connection(token, NOW)


def test_other_rsa_key_is_refused(rsa_pair: KeyPair, other_rsa_pair: KeyPair) -> None:
    verifier = TokenVerifier(load_keys(None, rsa_pair.public_pem, None))
    token = jwt.encode(claims(), other_rsa_pair.private, algorithm="RS256")
    with pytest.raises(TokenInvalid):
        verifier.verify_connection(token, NOW)


def test_rsa_pinned_to_rs256(rsa_pair: KeyPair) -> None:
    verifier = TokenVerifier(load_keys(None, rsa_pair.public_pem, "RS256"))
    for alg in ("RS512", "PS256"):
        token = jwt.encode(claims(), rsa_pair.private, algorithm=alg)
        with pytest.raises(TokenInvalid):
            verifier.verify_connection(token, NOW)


def test_wrong_secret_and_tampering() -> None:
    verifier = hs_verifier()
    with pytest.raises(TokenInvalid):
        verifier.verify_connection(hs(claims(), secret=OTHER_SECRET), NOW)
    head, _body, sig = hs(claims()).split(".")
    other_body = b64url(orjson.dumps(claims(sub="1")))
    with pytest.raises(TokenInvalid):
        verifier.verify_connection(f"{head}.{other_body}.{sig}", NOW)


@pytest.mark.parametrize(
    "raw",
    ["", "abc", "a.b.c", "a.b", "....", "eyJhbGciOiJIUzI1NiJ9..", None, 123, b"bytes"],
)
def test_garbage_tokens(raw: object) -> None:
    with pytest.raises(TokenInvalid):
        hs_verifier().verify_connection(raw, NOW)


# --- headers ----------------------------------------------------------------------------


def test_crit_header_is_refused() -> None:
    token = hs(claims(), headers={"crit": ["x-policy"], "x-policy": 1})
    with pytest.raises(TokenInvalid):
        hs_verifier().verify_connection(token, NOW)


def test_jku_and_x5u_headers_are_never_fetched(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the verifier tried to reach the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    headers = {
        "jku": "https://attacker.invalid/jwks.json",
        "x5u": "https://attacker.invalid/cert.pem",
        "kid": "attacker-key",
    }
    token = hs(claims(), headers=headers)
    assert hs_verifier().verify_connection(token, NOW).sub == "42"


# --- claims -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"sub": None}, id="no-sub"),
        pytest.param({"sub": ""}, id="empty-sub"),
        pytest.param({"sub": 42}, id="number-sub"),
        pytest.param({"sub": ["42"]}, id="list-sub"),
        pytest.param({"exp": None}, id="no-exp"),
        pytest.param({"exp": "soon"}, id="string-exp"),
        pytest.param({"exp": True}, id="bool-exp"),
        pytest.param({"iat": "now"}, id="string-iat"),
        pytest.param({"nbf": "later"}, id="string-nbf"),
        pytest.param({"jti": 7}, id="number-jti"),
        pytest.param({"channels": "document:1"}, id="channels-string"),
        pytest.param({"channels": [1]}, id="channels-numbers"),
        pytest.param({"channel": "document:1"}, id="connection-with-channel"),
    ],
)
def test_malformed_connection_claims(overrides: dict[str, Any]) -> None:
    with pytest.raises(TokenInvalid):
        hs_verifier().verify_connection(hs(claims(**overrides)), NOW)


def test_connection_token_cannot_be_a_subscription_token() -> None:
    token = hs(claims(channel="document:1"))
    with pytest.raises(TokenInvalid):
        hs_verifier().verify_connection(token, NOW)
    assert hs_verifier().verify_subscription(token, NOW).channel == "document:1"


def test_subscription_token_needs_a_channel() -> None:
    for payload in (claims(), claims(channel=""), claims(channel=5)):
        with pytest.raises(TokenInvalid):
            hs_verifier().verify_subscription(hs(payload), NOW)


def test_valid_subscription_token() -> None:
    payload = claims(channel="document:7", info={"role": "signer"}, jti="s-1")
    got = hs_verifier().verify_subscription(hs(payload), NOW)
    assert got == SubscriptionClaims(
        sub="42",
        channel="document:7",
        exp=NOW + 3600,
        iat=NOW,
        jti="s-1",
        info=orjson.dumps({"role": "signer"}),
    )


def test_subscription_token_exp_is_optional() -> None:
    got = hs_verifier().verify_subscription(hs(claims(channel="document:7", exp=None)), NOW)
    assert got.exp is None


def test_subscription_token_needs_sub() -> None:
    with pytest.raises(TokenInvalid):
        hs_verifier().verify_subscription(hs(claims(channel="document:7", sub=None)), NOW)


def test_audience_ignored_unless_configured() -> None:
    assert hs_verifier().verify_connection(hs(claims(aud="someone-else")), NOW).sub == "42"


def test_audience_checked_when_configured() -> None:
    verifier = hs_verifier(audience="realtime")
    assert verifier.verify_connection(hs(claims(aud="realtime")), NOW).sub == "42"
    assert verifier.verify_connection(hs(claims(aud=["x", "realtime"])), NOW).sub == "42"
    for payload in (claims(aud="other"), claims(), claims(aud=["other"])):
        with pytest.raises(TokenInvalid):
            verifier.verify_connection(hs(payload), NOW)


def test_issuer_ignored_unless_configured() -> None:
    assert hs_verifier().verify_connection(hs(claims(iss="whoever")), NOW).sub == "42"


def test_issuer_checked_when_configured() -> None:
    verifier = hs_verifier(issuer="https://app.example")
    assert verifier.verify_connection(hs(claims(iss="https://app.example")), NOW).sub == "42"
    for payload in (claims(iss="https://evil.example"), claims()):
        with pytest.raises(TokenInvalid):
            verifier.verify_connection(hs(payload), NOW)


def test_audience_checked_on_subscription_tokens() -> None:
    verifier = hs_verifier(audience="realtime")
    with pytest.raises(TokenInvalid):
        verifier.verify_subscription(hs(claims(channel="document:1", aud="other")), NOW)


# --- time -------------------------------------------------------------------------------


def test_expired_token() -> None:
    token = hs(claims(iat=int(NOW) - 7200, exp=int(NOW) - 3600))
    with pytest.raises(TokenExpired):
        hs_verifier().verify_connection(token, NOW)


def test_expired_subscription_token() -> None:
    token = hs(claims(channel="document:1", iat=int(NOW) - 7200, exp=int(NOW) - 3600))
    with pytest.raises(TokenExpired):
        hs_verifier().verify_subscription(token, NOW)


def test_not_yet_valid_token() -> None:
    token = hs(claims(nbf=int(NOW) + 600))
    with pytest.raises(TokenExpired):
        hs_verifier().verify_connection(token, NOW)
    assert hs_verifier().verify_connection(token, NOW + 600).sub == "42"


def test_issued_in_the_future_is_not_yet_valid() -> None:
    token = hs(claims(iat=int(NOW) + 600, exp=int(NOW) + 1200))
    with pytest.raises(TokenExpired):
        hs_verifier().verify_connection(token, NOW)


def test_exp_boundary_without_leeway() -> None:
    verifier = hs_verifier(leeway=0)
    token = hs(claims(exp=int(NOW) + 10))
    assert verifier.verify_connection(token, NOW + 10).sub == "42"
    with pytest.raises(TokenExpired):
        verifier.verify_connection(token, NOW + 11)


def test_leeway_applies_to_exp_nbf_iat() -> None:
    verifier = hs_verifier(leeway=5)
    expiring = hs(claims(exp=int(NOW) + 10))
    assert verifier.verify_connection(expiring, NOW + 15).sub == "42"
    with pytest.raises(TokenExpired):
        verifier.verify_connection(expiring, NOW + 16)
    early = hs(claims(nbf=int(NOW) + 5))
    assert verifier.verify_connection(early, NOW).sub == "42"
    with pytest.raises(TokenExpired):
        verifier.verify_connection(hs(claims(nbf=int(NOW) + 6)), NOW)
    future_iat = hs(claims(iat=int(NOW) + 5, exp=int(NOW) + 60))
    assert verifier.verify_connection(future_iat, NOW).sub == "42"


def test_max_lifetime_from_iat() -> None:
    verifier = hs_verifier(leeway=0, max_lifetime=3600)
    assert verifier.verify_connection(hs(claims(exp=int(NOW) + 3600)), NOW).sub == "42"
    with pytest.raises(TokenInvalid):
        verifier.verify_connection(hs(claims(exp=int(NOW) + 3601)), NOW)
    # issued long ago: the lifetime counts from iat, not from now
    old = hs(claims(iat=int(NOW) - 3000, exp=int(NOW) + 1000))
    with pytest.raises(TokenInvalid):
        verifier.verify_connection(old, NOW)


def test_max_lifetime_from_now_without_iat() -> None:
    verifier = hs_verifier(leeway=0, max_lifetime=3600)
    assert verifier.verify_connection(hs(claims(iat=None, exp=int(NOW) + 3600)), NOW)
    with pytest.raises(TokenInvalid):
        verifier.verify_connection(hs(claims(iat=None, exp=int(NOW) + 3601)), NOW)


def test_default_max_lifetime_is_a_day() -> None:
    verifier = hs_verifier()
    with pytest.raises(TokenInvalid):
        verifier.verify_connection(hs(claims(exp=int(NOW) + 86400 * 30)), NOW)


def test_max_lifetime_applies_to_subscription_tokens() -> None:
    verifier = hs_verifier(leeway=0, max_lifetime=60)
    with pytest.raises(TokenInvalid):
        verifier.verify_subscription(hs(claims(channel="document:1", exp=int(NOW) + 61)), NOW)


# --- length cap -------------------------------------------------------------------------


def test_length_cap_is_checked_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    token = hs(claims())
    verifier = hs_verifier(max_length=len(token) - 1)

    def must_not_decode(*args: object, **kwargs: object) -> None:
        raise AssertionError("a token over the length cap was decoded")

    monkeypatch.setattr(jwt, "get_unverified_header", must_not_decode)
    monkeypatch.setattr(jwt, "decode", must_not_decode)
    monkeypatch.setattr(jwt, "decode_complete", must_not_decode)
    monkeypatch.setattr(tokens, "decode_hmac_jws", must_not_decode)
    with pytest.raises(TokenInvalid, match="too long"):
        verifier.verify_connection(token, NOW)
    with pytest.raises(TokenInvalid, match="too long"):
        verifier.verify_subscription("x" * 10_000_000, NOW)


def test_token_at_the_length_cap_is_accepted() -> None:
    token = hs(claims())
    assert hs_verifier(max_length=len(token)).verify_connection(token, NOW).sub == "42"


def test_default_length_cap() -> None:
    token = hs(claims(info={"pad": "x" * 9000}))
    with pytest.raises(TokenInvalid, match="too long"):
        hs_verifier().verify_connection(token, NOW)


# --- messages never leak the token ------------------------------------------------------


def _failures(rsa_pair: KeyPair) -> list[tuple[TokenVerifier, str, str]]:
    """(verifier, method, token) triples that must all fail."""
    plain = hs_verifier()
    strict = hs_verifier(audience="realtime", issuer="https://app.example")
    conn, sub = "verify_connection", "verify_subscription"
    return [
        (plain, conn, hs(claims(exp=int(NOW) - 10))),
        (plain, conn, hs(claims(nbf=int(NOW) + 100))),
        (plain, conn, hs(claims(), secret=OTHER_SECRET)),
        (plain, conn, hs(claims(), alg="HS512")),
        (plain, conn, hs(claims(sub=""))),
        (plain, conn, hs(claims(exp=None))),
        (plain, conn, hs(claims(channel="document:1"))),
        (plain, sub, hs(claims())),
        (plain, sub, hs(claims(channel="document:1", exp=int(NOW) - 10))),
        (plain, conn, hs(claims(exp=int(NOW) + 10**7))),
        (plain, conn, hs(claims(), headers={"crit": ["x"]})),
        (strict, conn, hs(claims(aud="nobody", iss="https://app.example"))),
        (strict, conn, hs(claims(aud="realtime", iss="https://evil.example"))),
        (plain, conn, jwt.encode(claims(), rsa_pair.private, algorithm="RS256")),
        (plain, conn, jwt.encode(claims(), "", algorithm="none")),
        (plain, conn, forge_hs256(claims(), rsa_pair.public_pem.encode())),
        (plain, conn, hs(claims())[:-4] + "AAAA"),
        (plain, conn, hs(claims()).replace(".", "!", 1)),
        (hs_verifier(max_length=64), conn, hs(claims())),
    ]


def test_errors_never_contain_the_token(rsa_pair: KeyPair) -> None:
    for verifier, method, token in _failures(rsa_pair):
        with pytest.raises((TokenInvalid, TokenExpired)) as info:
            getattr(verifier, method)(token, NOW)
        text = "".join(traceback.format_exception(info.value))
        assert token not in text
        for part in token.split("."):
            if len(part) > 8:
                assert part not in text, "a token segment leaked into an error"
        assert SECRET not in text


def test_expiry_is_not_confused_with_invalidity() -> None:
    """Expired/not-yet-valid is TokenExpired (109); never TokenInvalid (close 3500)."""
    assert not issubclass(TokenExpired, TokenInvalid)
    assert not issubclass(TokenInvalid, TokenExpired)


def test_keyset_is_reusable_by_several_verifiers() -> None:
    keys: KeySet = load_keys(SECRET, None, "HS256")
    a = TokenVerifier(keys, audience="a")
    b = TokenVerifier(keys)
    token = hs(claims(aud="b"))
    with pytest.raises(TokenInvalid):
        a.verify_connection(token, NOW)
    assert b.verify_connection(token, NOW).sub == "42"
