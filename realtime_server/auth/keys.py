"""Verification keys and the pinned algorithm allow-list.

One key family per server: an HMAC secret with HS256/384/512, or a public key with the
algorithms of its type (RS*/PS* for RSA, ES* for EC, EdDSA for Ed25519/Ed448). ``none``
is never allowed, and a public key is never used as an HMAC secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ..errors import ConfigError

__all__ = ["HMAC_ALGORITHMS", "KeySet", "load_keys"]

HMAC_ALGORITHMS: Final = frozenset({"HS256", "HS384", "HS512"})
RSA_ALGORITHMS: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS: Final = frozenset({"ES256", "ES384", "ES512"})
EDDSA_ALGORITHMS: Final = frozenset({"EdDSA"})


@dataclass(frozen=True, slots=True)
class KeySet:
    """The key tokens are verified with, and the algorithms they may use."""

    key: Any
    algorithms: tuple[str, ...]

    @property
    def is_hmac(self) -> bool:
        return self.algorithms[0] in HMAC_ALGORITHMS

    def __repr__(self) -> str:  # never show the secret
        return f"KeySet(algorithms={self.algorithms!r})"


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


def load_keys(secret: str | None, public_key: str | None, algorithms: str | None) -> KeySet:
    """Build the key set from configuration values.

    Raises:
        ConfigError: naming the variable, when no key or both kinds are set, when an
            algorithm is unknown, ``none``, or of another family than the key.
    """
    if secret and public_key:
        raise ConfigError(
            "REALTIME_JWT_SECRET and REALTIME_JWT_PUBLIC_KEY are both set: choose one key family"
        )
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
    raise ConfigError("REALTIME_JWT_SECRET or REALTIME_JWT_PUBLIC_KEY must be set")
