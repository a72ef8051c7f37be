"""Token verification (pure: the current time is passed in, nothing is logged).

Connection token: ``sub`` (non-empty) and ``exp`` required; optional ``iat``, ``nbf``,
``jti``, ``info``, ``channels``; a ``channel`` claim makes it invalid.
Subscription token: ``sub`` and ``channel`` required; optional ``exp``, ``iat``,
``nbf``, ``jti``, ``info``.

Outcomes: :class:`TokenInvalid` (bad signature, algorithm, claims, audience, issuer,
lifetime, length, ``crit`` header; :class:`UnknownKey` when the ``kid`` is not in the
key set) or :class:`TokenExpired` (expired or not yet valid); :class:`KeysUnavailable`
when a token needs the key set and none was fetched yet. The messages are safe to log:
they never include the token. HMAC tokens are checked by :mod:`.hmac_jws` (strict
compact JWS, constant-time compare), public-key tokens by PyJWT.

With a key set (``REALTIME_JWT_JWKS_URL``) the verifier reads the current keys from the
:class:`KeySource` it is given and does no I/O itself; only
:meth:`TokenVerifier.verify_connection_fresh` may await the source's rate-limited
refetch.
Whatever the input (any character, any JSON behind a valid signature: fuzzed in
``tests/test_token_fuzz.py``), nothing else is raised.
"""

from __future__ import annotations

import math
from typing import Any, Final, Protocol

import jwt
import orjson

from ..errors import BackendUnavailable, RealtimeError
from ..model import RawJSON, raw_json
from ..values import immutable
from .hmac_jws import HMAC_DIGESTS, MalformedToken, decode_hmac_jws, parse_header
from .jwks import JwkSet, KeyMismatch, UnknownKid
from .keys import KeySet

__all__ = [
    "ConnectionClaims",
    "KeySource",
    "KeysUnavailable",
    "SubscriptionClaims",
    "TokenExpired",
    "TokenInvalid",
    "TokenVerifier",
    "UnknownKey",
]

DEFAULT_MAX_LENGTH: Final = 8192


class TokenInvalid(RealtimeError):
    """The token is not acceptable and retrying with it will not help."""


class TokenExpired(RealtimeError):
    """The token is expired or not yet valid: the client should get a new one.

    ``subject`` is the token's ``sub``: its signature verified, so the refusal can be
    recorded under the user it names (the audit trail's ``connect_rejected`` rows)."""

    subject: str | None = None


class UnknownKey(TokenInvalid):
    """The token's ``kid`` is not in the current key set (a refetch may bring it)."""


class KeysUnavailable(BackendUnavailable):
    """No key set was fetched yet: the client retries (error 100, temporary)."""


class KeySource(Protocol):
    """Where a verifier finds the identity provider's current keys."""

    @property
    def current(self) -> JwkSet | None:
        """The last good key set; None before any was fetched."""
        ...

    async def refetch_unknown(self) -> bool:
        """Called for a token whose ``kid`` is unknown: fetch the set again if allowed
        (at most once per interval; a fetch in flight is joined). Returns whether a
        fetch completed, i.e. whether verifying again can help. Never raises."""
        ...


@immutable
class ConnectionClaims:
    sub: str
    exp: float
    iat: float | None = None
    jti: str | None = None
    info: RawJSON | None = None
    channels: tuple[str, ...] = ()


@immutable
class SubscriptionClaims:
    sub: str
    channel: str
    exp: float | None = None
    iat: float | None = None
    jti: str | None = None
    info: RawJSON | None = None


def _number(payload: dict[str, Any], name: str, *, required: bool = False) -> float | None:
    value = payload.get(name)
    if value is None:
        if required:
            raise TokenInvalid(f"missing {name} claim")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenInvalid(f"malformed {name} claim")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond a double (PyJWT parses any size)
        raise TokenInvalid(f"malformed {name} claim") from None
    if not math.isfinite(number):
        raise TokenInvalid(f"malformed {name} claim")
    return number


def _string(payload: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = payload.get(name)
    if value is None:
        if required:
            raise TokenInvalid(f"missing {name} claim")
        return None
    if not isinstance(value, str) or (required and not value):
        raise TokenInvalid(f"malformed {name} claim")
    if len(value) > 256:
        raise TokenInvalid(f"{name} claim too long")
    return value


def _info(payload: dict[str, Any]) -> RawJSON | None:
    """The ``info`` claim as JSON bytes (shown to others as ``conn_info``)."""
    if "info" not in payload:
        return None
    try:
        return raw_json(payload["info"])
    except orjson.JSONEncodeError:  # integers beyond 64 bits, JSON nested too deep
        raise TokenInvalid("malformed info claim") from None


class TokenVerifier:
    """Verifies connection and subscription tokens with a pinned key set."""

    def __init__(
        self,
        keys: KeySet,
        *,
        source: KeySource | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 1.0,
        max_lifetime: float = 86400.0,
        max_length: int = DEFAULT_MAX_LENGTH,
    ) -> None:
        self._keys = keys
        self._audience = audience
        self._issuer = issuer
        self._leeway = leeway
        self._max_lifetime = max_lifetime
        self._max_length = max_length
        self._algorithms = list(keys.algorithms)
        # HMAC keys: our own compact-JWS check (hmac_jws); public keys: PyJWT.
        self._hmac_digests: dict[str, str] | None = (
            {alg: HMAC_DIGESTS[alg] for alg in keys.algorithms} if keys.secret is not None else None
        )
        if keys.jwks_url is not None and source is None:
            raise ValueError("a key set (jwks_url) needs a key source")
        self.source = source if keys.jwks_url is not None else None
        self._jwks_algorithms = frozenset(keys.jwks_algorithms)
        self.jwks_algorithms = keys.jwks_algorithms
        """The algorithms tokens verified with the key set may use."""
        self._options: Any = {
            "verify_signature": True,
            "verify_exp": False,  # checked below against the injected time
            "verify_nbf": False,
            "verify_iat": False,
            "verify_aud": audience is not None,
            "verify_iss": issuer is not None,
            "verify_sub": False,
            "verify_jti": False,
            "require": [],
        }

    def _decode(self, raw: object) -> dict[str, Any]:
        if not isinstance(raw, str) or not raw:
            raise TokenInvalid("missing token")
        if len(raw) > self._max_length:
            raise TokenInvalid("token too long")
        if not raw.isascii():  # no compact JWS is; PyJWT would fail to encode a surrogate
            raise TokenInvalid("bad signature or malformed token")
        if self.source is not None:
            return self._decode_by_header(raw)
        if self._hmac_digests is not None:
            return self._decode_hmac(raw, self._hmac_digests)
        return self._decode_public(raw, self._keys.key, self._algorithms)

    def _decode_hmac(self, raw: str, digests: dict[str, str]) -> dict[str, Any]:
        try:
            _header, payload = decode_hmac_jws(raw, self._keys.key, digests)
        except MalformedToken as exc:
            raise TokenInvalid(exc.args[0]) from None
        self._check_audience_and_issuer(payload)
        return payload

    def _decode_by_header(self, raw: str) -> dict[str, Any]:
        """With a key set: the header's ``alg`` picks the secret (HS*) or the set, and
        its ``kid`` the key of the set. ``jku``/``x5u``/``jwk``/``x5c`` are never read."""
        try:
            header = parse_header(raw)
        except MalformedToken as exc:
            raise TokenInvalid(exc.args[0]) from None
        alg = header.get("alg")
        digests = self._hmac_digests
        if digests is not None and alg in digests:
            return self._decode_hmac(raw, digests)
        if not isinstance(alg, str) or alg not in self._jwks_algorithms:
            raise TokenInvalid("algorithm not allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenInvalid("malformed header")
        assert self.source is not None
        keys = self.source.current
        if keys is None:
            raise KeysUnavailable("no key set fetched yet")
        try:
            jwk = keys.find(kid, alg)
        except UnknownKid:
            raise UnknownKey("unknown key id") from None
        except KeyMismatch as exc:
            raise TokenInvalid(exc.args[0]) from None
        return self._decode_public(raw, jwk.key, [alg])

    def _decode_public(self, raw: str, key: Any, algorithms: list[str]) -> dict[str, Any]:
        try:
            # One parse: the signature is checked with the pinned algorithms only (PyJWT
            # refuses any other "alg", "none" included); the header is then checked
            # again here. (A separate unverified-header parse was 25% of this call.)
            decoded = jwt.decode_complete(
                raw,
                key,
                algorithms=algorithms,
                audience=self._audience,
                issuer=self._issuer,
                options=self._options,
            )
        except jwt.InvalidAlgorithmError:
            raise TokenInvalid("algorithm not allowed") from None
        except jwt.InvalidAudienceError:
            raise self._wrong("audience") from None
        except jwt.InvalidIssuerError:
            raise self._wrong("issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenInvalid(f"missing {exc.claim} claim") from None
        except jwt.PyJWTError:
            raise TokenInvalid("bad signature or malformed token") from None
        header, payload = decoded["header"], decoded["payload"]
        if header.get("alg") not in algorithms:
            raise TokenInvalid("algorithm not allowed")
        if "crit" in header:
            raise TokenInvalid("unsupported critical header")
        if not isinstance(payload, dict):
            raise TokenInvalid("malformed claims")
        return payload

    def _check_audience_and_issuer(self, payload: dict[str, Any]) -> None:
        """What PyJWT checks for ``aud`` and ``iss`` when they are configured."""
        audience = self._audience
        if audience is not None:
            claimed = payload.get("aud")
            if not claimed:
                raise TokenInvalid("missing aud claim")
            if isinstance(claimed, str):
                claimed = [claimed]
            if not isinstance(claimed, list) or not all(isinstance(a, str) for a in claimed):
                raise self._wrong("audience")
            if audience not in claimed:
                raise self._wrong("audience")
        if self._issuer is not None:
            if "iss" not in payload:
                raise TokenInvalid("missing iss claim")
            if payload["iss"] != self._issuer:
                raise self._wrong("issuer")

    def _wrong(self, claim: str) -> TokenInvalid:
        """A refusal naming what was expected (configuration, never the token's value:
        an operator setting up an identity provider sees the mismatch in the log)."""
        expected = self._audience if claim == "audience" else self._issuer
        return TokenInvalid(f"wrong {claim} (REALTIME_JWT_{claim.upper()} is {expected!r})")

    def _check_time(
        self, exp: float | None, iat: float | None, nbf: float | None, now: float
    ) -> None:
        if exp is not None:
            start = iat if iat is not None else now
            if exp - start > self._max_lifetime:
                raise TokenInvalid("token lifetime exceeds the maximum")
            if now > exp + self._leeway:
                raise TokenExpired("token expired")
        if nbf is not None and now + self._leeway < nbf:
            raise TokenExpired("token not yet valid")
        if iat is not None and now + self._leeway < iat:
            raise TokenExpired("token issued in the future")

    def verify_connection(self, raw: object, now: float) -> ConnectionClaims:
        """Verify a connection token at time ``now`` (seconds since the epoch)."""
        payload = self._decode(raw)
        if "channel" in payload:
            raise TokenInvalid("connection token carries a channel claim")
        sub = _string(payload, "sub", required=True)
        exp = _number(payload, "exp", required=True)
        iat = _number(payload, "iat")
        nbf = _number(payload, "nbf")
        jti = _string(payload, "jti")
        channels = payload.get("channels", [])
        if channels is None:
            channels = []
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise TokenInvalid("malformed channels claim")
        info = _info(payload)
        assert sub is not None and exp is not None
        try:
            self._check_time(exp, iat, nbf, now)
        except TokenExpired as exc:
            exc.subject = sub
            raise
        return ConnectionClaims(sub, exp, iat, jti, info, tuple(dict.fromkeys(channels)))

    async def verify_connection_fresh(self, raw: object, now: float) -> ConnectionClaims:
        """:meth:`verify_connection`; when the token names a ``kid`` the key set lacks,
        once more after the key source's refetch, if it allows one (at most one per
        ``REALTIME_JWT_JWKS_MIN_INTERVAL``, bounded by the fetch timeout): the only
        network a connect may wait on. A made-up ``kid`` ends as :class:`UnknownKey`."""
        try:
            return self.verify_connection(raw, now)
        except UnknownKey:
            if self.source is None or not await self.source.refetch_unknown():
                raise
        return self.verify_connection(raw, now)

    def verify_subscription(self, raw: object, now: float) -> SubscriptionClaims:
        """Verify a subscription token at time ``now``. The caller checks ``sub`` and
        ``channel`` against the connection and the requested channel."""
        payload = self._decode(raw)
        sub = _string(payload, "sub", required=True)
        channel = _string(payload, "channel", required=True)
        exp = _number(payload, "exp")
        iat = _number(payload, "iat")
        nbf = _number(payload, "nbf")
        jti = _string(payload, "jti")
        info = _info(payload)
        assert sub is not None and channel is not None
        self._check_time(exp, iat, nbf, now)
        return SubscriptionClaims(sub, channel, exp, iat, jti, info)
