"""Verification keys and the pinned algorithm allow-list.

An HMAC secret with HS256/384/512, or a public key with the algorithms of its type
(RS*/PS* for RSA, ES* for EC, EdDSA for Ed25519/Ed448), or a key set fetched from an
identity provider (``REALTIME_JWT_JWKS_URL``, see :mod:`.jwks`), alone or together with
a secret: HS* tokens are then checked with the secret only, the others with the set
only. ``none`` is never allowed, and a public key is never used as an HMAC secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ..errors import ConfigError
from .jwks import JWKS_ALGORITHMS, check_jwks_url

__all__ = ["DEFAULT_JWKS_ALGORITHMS", "HMAC_ALGORITHMS", "KeySet", "load_keys"]

HMAC_ALGORITHMS: Final = frozenset({"HS256", "HS384", "HS512"})
RSA_ALGORITHMS: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS: Final = frozenset({"ES256", "ES384", "ES512"})
EDDSA_ALGORITHMS: Final = frozenset({"EdDSA"})
DEFAULT_JWKS_ALGORITHMS: Final = "RS256,PS256,ES256,EdDSA"
"""What identity providers sign with; HS256 is added when a secret is set too."""


@dataclass(frozen=True, slots=True)
class KeySet:
    """The keys tokens are verified with, and the algorithms each may use.

    ``key`` is the HMAC secret (bytes) or the PEM public key, with ``algorithms``; None
    when only a key set is configured. ``jwks_url`` is the key set's address, with
    ``jwks_algorithms`` (asymmetric only); the keys themselves arrive at run time.
    """

    key: Any
    algorithms: tuple[str, ...]
    jwks_url: str | None = None
    jwks_algorithms: tuple[str, ...] = ()

    @property
    def is_hmac(self) -> bool:
        """Only an HMAC secret (no public key, no key set)."""
        return isinstance(self.key, bytes) and self.jwks_url is None

    @property
    def secret(self) -> bytes | None:
        return self.key if isinstance(self.key, bytes) else None

    @property
    def allowed(self) -> tuple[str, ...]:
        """Every algorithm a token may use."""
        return self.algorithms + self.jwks_algorithms

    def __repr__(self) -> str:  # never show the secret
        return f"KeySet(algorithms={self.allowed!r})"


def _parse_algorithms(raw: str | None, default: str) -> tuple[str, ...]:
    text = raw if raw else default
    algorithms = tuple(a.strip() for a in text.split(",") if a.strip())
    if not algorithms:
        raise ConfigError("REALTIME_JWT_ALGORITHMS: empty list")
    for alg in algorithms:
        if alg.lower() == "none":
            raise ConfigError("REALTIME_JWT_ALGORITHMS: 'none' is never allowed")
    return algorithms


def _public_key_family(key: Any) -> frozenset[str]:
    if isinstance(key, rsa.RSAPublicKey):
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        return EC_ALGORITHMS
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return EDDSA_ALGORITHMS
    raise ConfigError("REALTIME_JWT_PUBLIC_KEY: unsupported key type")


def _read_pem(value: str) -> bytes:
    if value.startswith("@"):
        path = Path(value[1:])
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"REALTIME_JWT_PUBLIC_KEY: cannot read {path}: {exc.strerror}"
            ) from None
    return value.encode()


def _load_with_jwks(secret: str | None, algorithms: str | None, jwks_url: str) -> KeySet:
    """A key set, alone or with a secret: the allow-list is split between the two."""
    check_jwks_url(jwks_url)
    default = DEFAULT_JWKS_ALGORITHMS + (",HS256" if secret else "")
    algs = _parse_algorithms(algorithms, default)
    unknown = [a for a in algs if a not in HMAC_ALGORITHMS | JWKS_ALGORITHMS]
    if unknown:
        raise ConfigError(f"REALTIME_JWT_ALGORITHMS: unknown algorithm {','.join(unknown)}")
    hmac_algs = tuple(a for a in algs if a in HMAC_ALGORITHMS)
    jwks_algs = tuple(a for a in algs if a not in HMAC_ALGORITHMS)
    if hmac_algs and not secret:
        raise ConfigError(
            f"REALTIME_JWT_ALGORITHMS: {','.join(hmac_algs)} needs REALTIME_JWT_SECRET "
            "(a key set never holds HMAC secrets)"
        )
    if secret and not hmac_algs:
        raise ConfigError(
            "REALTIME_JWT_ALGORITHMS: REALTIME_JWT_SECRET is set but no HS* algorithm is allowed"
        )
    if not jwks_algs:
        raise ConfigError(
            "REALTIME_JWT_ALGORITHMS: no RS*/PS*/ES*/EdDSA algorithm for REALTIME_JWT_JWKS_URL"
        )
    key = secret.encode() if secret else None
    return KeySet(key, hmac_algs, jwks_url, jwks_algs)


def load_keys(
    secret: str | None,
    public_key: str | None,
    algorithms: str | None,
    jwks_url: str | None = None,
) -> KeySet:
    """Build the key set from configuration values.

    Raises:
        ConfigError: naming the variable, when no key is set, a secret and a public key
            (or a public key and a key set) are both set, when an algorithm is unknown,
            ``none``, or of another family than the key.
    """
    if secret and public_key:
        raise ConfigError(
            "REALTIME_JWT_SECRET and REALTIME_JWT_PUBLIC_KEY are both set: choose one key family"
        )
    if public_key and jwks_url:
        raise ConfigError(
            "REALTIME_JWT_PUBLIC_KEY and REALTIME_JWT_JWKS_URL are both set: choose one"
        )
    if jwks_url:
        return _load_with_jwks(secret, algorithms, jwks_url)
    if secret:
        algs = _parse_algorithms(algorithms, "HS256")
        bad = [a for a in algs if a not in HMAC_ALGORITHMS]
        if bad:
            raise ConfigError(
                f"REALTIME_JWT_ALGORITHMS: {','.join(bad)} cannot be used with REALTIME_JWT_SECRET"
            )
        return KeySet(secret.encode(), algs)
    if public_key:
        try:
            key = load_pem_public_key(_read_pem(public_key))
        except (ValueError, TypeError):
            raise ConfigError("REALTIME_JWT_PUBLIC_KEY: not a PEM public key") from None
        family = _public_key_family(key)
        default = sorted(family)[0] if family is not RSA_ALGORITHMS else "RS256"
        algs = _parse_algorithms(algorithms, default)
        bad = [a for a in algs if a not in family]
        if bad:
            raise ConfigError(
                f"REALTIME_JWT_ALGORITHMS: {','.join(bad)} does not match the public key type"
            )
        return KeySet(key, algs)
    raise ConfigError(
        "REALTIME_JWT_SECRET, REALTIME_JWT_PUBLIC_KEY or REALTIME_JWT_JWKS_URL must be set"
    )
