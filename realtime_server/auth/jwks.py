"""A JSON Web Key Set (RFC 7517) turned into verification keys (pure: bytes in, keys out).

Each usable JWK becomes a :class:`Jwk`: a ``cryptography`` public key and the algorithms
it may verify. The rules, chosen so that no key can serve an algorithm it was not made
for:

- ``RSA`` keys (2048 bits or more) serve RS256/384/512 and PS256/384/512; ``EC`` keys
  the one algorithm of their curve (P-256 ES256, P-384 ES384, P-521 ES512); ``OKP``
  keys on Ed25519 or Ed448 serve EdDSA. Every other key type is skipped, ``oct`` above
  all: a JWK is never an HMAC secret (HS* tokens are checked with
  ``REALTIME_JWT_SECRET`` only).
- A key naming an ``alg`` serves that algorithm only, and is skipped when the ``alg``
  does not fit its type and curve. A key whose ``use`` is present and not ``sig``, or
  whose ``key_ops`` is present without ``verify``, is skipped.
- Only the public parameters are read (``d`` and the other private members, should a
  provider leak them, are ignored); ``x5c``/``x5u``/``x5t`` are never read, let alone
  fetched.
- The configured allow-list still applies: a key left with no allowed algorithm is
  skipped.

A set that is not a JSON object with a ``keys`` array, holds more than
:data:`MAX_KEYS` entries or leaves no usable key is refused (:class:`JwksError`): the
caller keeps the last good set.

Which key verifies a token: the one whose ``kid`` is the token's, provided it serves
the token's ``alg``; a token without ``kid`` only when exactly one key serves its
``alg`` (:meth:`JwkSet.find`).
"""

from __future__ import annotations

import binascii
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import orjson
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from ..errors import ConfigError

__all__ = [
    "EC_CURVES",
    "JWKS_ALGORITHMS",
    "MAX_KEYS",
    "MIN_RSA_BITS",
    "Jwk",
    "JwkSet",
    "JwksError",
    "KeyMismatch",
    "UnknownKid",
    "check_jwks_url",
    "parse_jwks",
]

PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)

RSA_FAMILY: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_CURVES: Final[Mapping[str, tuple[ec.EllipticCurve, str, int]]] = {
    # crv: (curve, its one algorithm, coordinate length in bytes)
    "P-256": (ec.SECP256R1(), "ES256", 32),
    "P-384": (ec.SECP384R1(), "ES384", 48),
    "P-521": (ec.SECP521R1(), "ES512", 66),
}
JWKS_ALGORITHMS: Final = RSA_FAMILY | frozenset({"ES256", "ES384", "ES512", "EdDSA"})
"""Every algorithm a key of a set can ever serve."""
MAX_KEYS: Final = 100
"""Providers publish two to five keys; more than this is not a key set we should parse
(each RSA key costs a big-integer check)."""
MIN_RSA_BITS: Final = 2048
_B64URL: Final = re.compile(r"[A-Za-z0-9_-]*")
_PRIVATE_MEMBERS: Final = ("d", "p", "q", "dp", "dq", "qi", "oth")


class JwksError(ValueError):
    """The document is not a usable key set; ``args[0]`` is safe to log."""


class UnknownKid(LookupError):
    """No key of the set has the token's ``kid`` (a refetch may find it)."""


class KeyMismatch(LookupError):
    """The set holds no key that may verify this token (``args[0]`` is safe to log):
    the ``kid``'s key does not serve the algorithm, or a token without ``kid`` does not
    single out one key."""


@dataclass(frozen=True, slots=True)
class Jwk:
    """One verification key of a set."""

    kid: str | None
    kty: str
    key: PublicKey
    algorithms: frozenset[str]


@dataclass(frozen=True, slots=True)
class JwkSet:
    """The usable keys of a key set, and why the others were skipped."""

    keys: tuple[Jwk, ...]
    skipped: tuple[str, ...] = ()
    """One short reason per skipped entry (``"kid k2: use enc"``), for ``check`` and logs."""
    _by_kid: dict[str, tuple[Jwk, ...]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        by_kid: dict[str, list[Jwk]] = {}
        for jwk in self.keys:
            if jwk.kid is not None:
                by_kid.setdefault(jwk.kid, []).append(jwk)
        self._by_kid.update({kid: tuple(keys) for kid, keys in by_kid.items()})

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(self._by_kid)

    def __len__(self) -> int:
        return len(self.keys)

    def find(self, kid: str | None, alg: str) -> Jwk:
        """The key that verifies a token with header ``kid`` and ``alg``.

        Raises:
            UnknownKid: no key has this ``kid``.
            KeyMismatch: the ``kid``'s key (or keys) cannot serve ``alg``; or there is no
                ``kid`` and not exactly one key serves ``alg``.
        """
        if kid is not None:
            named = self._by_kid.get(kid)
            if named is None:
                raise UnknownKid(kid)
            fitting = [k for k in named if alg in k.algorithms]
            if len(fitting) != 1:  # none, or a set that repeats a kid for one algorithm
                raise KeyMismatch("the token's key does not serve its algorithm")
            return fitting[0]
        fitting = [k for k in self.keys if alg in k.algorithms]
        if len(fitting) != 1:
            raise KeyMismatch("token without kid: no single key serves its algorithm")
        return fitting[0]


def _b64url_uint(value: object, name: str) -> bytes:
    """A base64url member (RFC 7518 §2: no padding; tolerated when present)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"missing {name}")
    text = value.rstrip("=")
    if len(text) % 4 == 1 or _B64URL.fullmatch(text) is None:
        raise ValueError(f"malformed {name}")
    padded = text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4)
    try:
        return binascii.a2b_base64(padded, strict_mode=True)
    except binascii.Error:
        raise ValueError(f"malformed {name}") from None


def _rsa(jwk: Mapping[str, Any]) -> tuple[PublicKey, frozenset[str]]:
    n = int.from_bytes(_b64url_uint(jwk.get("n"), "n"), "big")
    e = int.from_bytes(_b64url_uint(jwk.get("e"), "e"), "big")
    if n.bit_length() < MIN_RSA_BITS:
        raise ValueError(f"RSA key shorter than {MIN_RSA_BITS} bits")
    return rsa.RSAPublicNumbers(e, n).public_key(), RSA_FAMILY


def _ec(jwk: Mapping[str, Any]) -> tuple[PublicKey, frozenset[str]]:
    crv = jwk.get("crv")
    if not isinstance(crv, str) or crv not in EC_CURVES:
        raise ValueError("unsupported curve")
    curve, alg, size = EC_CURVES[crv]
    x, y = _b64url_uint(jwk.get("x"), "x"), _b64url_uint(jwk.get("y"), "y")
    if len(x) != size or len(y) != size:
        raise ValueError("malformed coordinates")
    numbers = ec.EllipticCurvePublicNumbers(
        int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve
    )
    return numbers.public_key(), frozenset({alg})  # checks the point is on the curve


def _okp(jwk: Mapping[str, Any]) -> tuple[PublicKey, frozenset[str]]:
    crv = jwk.get("crv")
    x = _b64url_uint(jwk.get("x"), "x")
    key: PublicKey
    if crv == "Ed25519":
        key = ed25519.Ed25519PublicKey.from_public_bytes(x)
    elif crv == "Ed448":
        key = ed448.Ed448PublicKey.from_public_bytes(x)
    else:  # X25519/X448 are key-agreement curves, never signatures
        raise ValueError("unsupported curve")
    return key, frozenset({"EdDSA"})


_BUILDERS: Final = {"RSA": _rsa, "EC": _ec, "OKP": _okp}


def _parse_one(entry: object, allowed: frozenset[str]) -> Jwk:
    """One JWK; raises ValueError with a short reason when it is skipped."""
    if not isinstance(entry, dict):
        raise ValueError("not an object")
    kid = entry.get("kid")
    if kid is not None and (not isinstance(kid, str) or not kid or len(kid) > 256):
        raise ValueError("malformed kid")
    use = entry.get("use")
    if use is not None and use != "sig":
        raise ValueError(f"use {str(use)[:16]}")
    ops = entry.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise ValueError("key_ops without verify")
    kty = entry.get("kty")
    builder = _BUILDERS.get(kty) if isinstance(kty, str) else None
    if builder is None:
        raise ValueError(f"key type {str(kty)[:16]} not used")
    public = {k: v for k, v in entry.items() if k not in _PRIVATE_MEMBERS}
    key, algorithms = builder(public)
    alg = entry.get("alg")
    if alg is not None:
        if not isinstance(alg, str) or alg not in algorithms:
            raise ValueError(f"alg {str(alg)[:16]} does not fit the key")
        algorithms = frozenset({alg})
    algorithms &= allowed
    if not algorithms:
        raise ValueError("no allowed algorithm")
    assert isinstance(kty, str)
    return Jwk(kid, kty, key, algorithms)


def parse_jwks(body: bytes, allowed: Iterable[str] = JWKS_ALGORITHMS) -> JwkSet:
    """Parse a key set document, keeping the keys that may verify ``allowed`` algorithms.

    Raises:
        JwksError: not a key set, too many keys, or no usable key.
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise JwksError("not JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError("not a key set (no keys array)")
    entries: list[Any] = document["keys"]
    if len(entries) > MAX_KEYS:
        raise JwksError(f"more than {MAX_KEYS} keys")
    allowed_set = frozenset(allowed) & JWKS_ALGORITHMS
    keys: list[Jwk] = []
    skipped: list[str] = []
    for entry in entries:
        try:
            keys.append(_parse_one(entry, allowed_set))
        except ValueError as exc:  # cryptography's own checks raise ValueError too
            kid = entry.get("kid") if isinstance(entry, dict) else None
            label = f"kid {kid[:64]}" if isinstance(kid, str) else "a key without kid"
            skipped.append(f"{label}: {exc.args[0] if exc.args else 'invalid'}")
    if not keys:
        raise JwksError("no usable key" + (f" ({'; '.join(skipped[:3])})" if skipped else ""))
    return JwkSet(tuple(keys), tuple(skipped))


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_jwks_url(url: str) -> str:
    """Validate ``REALTIME_JWT_JWKS_URL``: https, or http to a loopback host only; no
    credentials in it. Returns the host (what logs and ``check`` show).

    Raises:
        ConfigError: naming the variable.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ConfigError("REALTIME_JWT_JWKS_URL: not a URL") from None
    if not host or parts.scheme not in ("https", "http"):
        raise ConfigError("REALTIME_JWT_JWKS_URL: expected https://host/path")
    if parts.username is not None or parts.password is not None:
        raise ConfigError("REALTIME_JWT_JWKS_URL: no credentials in the URL")
    if parts.scheme == "http" and not _is_loopback(host):
        raise ConfigError("REALTIME_JWT_JWKS_URL: https only (http is allowed to loopback hosts)")
    return host
