"""Compact JWS with an HMAC key (HS256/384/512), verified without a generic JWT library.

Every connect verifies a token; PyJWT's generic path cost about 75 µs of it (header
parsed, algorithm objects looked up, key prepared on every call), this one about 6 µs.
Public-key algorithms stay with PyJWT (:mod:`.tokens`).

Stricter than RFC 7515 requires, never looser than PyJWT:

- exactly three segments of unpadded, canonical base64url (RFC 7515 §2: no padding,
  no whitespace, no other alphabet, unused bits zero; PyJWT tolerates some of these);
- the header is a JSON object whose ``alg`` is in the caller's allow-list (``none`` and
  every non-HMAC algorithm are never in it: :mod:`.keys`);
- the signature is compared in constant time *before* the payload is parsed;
- ``crit`` is refused (no extension is understood), ``b64`` other than ``true`` is
  refused (RFC 7797 unencoded payloads), ``kid`` must be a string when present;
  ``jku``/``x5u``/``jwk`` are ignored and never fetched.

Errors carry fixed messages: never the token or a part of it.
"""

from __future__ import annotations

import binascii
import functools
import hmac
import re
from typing import Any, Final

import orjson

__all__ = ["HMAC_DIGESTS", "MalformedToken", "decode_hmac_jws", "parse_header"]

HMAC_DIGESTS: Final = {"HS256": "sha256", "HS384": "sha384", "HS512": "sha512"}

_SEGMENT: Final = re.compile(rb"[A-Za-z0-9_-]*")
_TO_STANDARD: Final = bytes.maketrans(b"-_", b"+/")  # bytes: str.translate was 2 µs


@functools.lru_cache(maxsize=16)
def _keyed(key: bytes, digest: str) -> hmac.HMAC:
    """The standard library's HMAC keyed with ``key``, made once per key and algorithm:
    a verification copies it instead of keying HMAC again."""
    return hmac.new(key, digestmod=digest)


def _hmac(key: bytes, message: bytes, digest: str) -> bytes:
    """``hmac.digest(key, message, digest)`` from a copy of the keyed HMAC: 19,400
    instructions for an HS256 token instead of 26,200 (valgrind; OpenSSL's one-shot HMAC
    sets the key up on every call). ``tests/test_hmac_jws.py`` checks they agree."""
    mac = _keyed(key, digest).copy()
    mac.update(message)
    return mac.digest()


class MalformedToken(ValueError):
    """The token is not acceptable; ``args[0]`` is a message safe to log."""


def _segment(text: str) -> bytes:
    """Decode one unpadded base64url segment, strictly."""
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        raise MalformedToken("bad signature or malformed token") from None
    if len(raw) % 4 == 1 or _SEGMENT.fullmatch(raw) is None:
        raise MalformedToken("bad signature or malformed token")
    padded = raw.translate(_TO_STANDARD) + b"=" * (-len(raw) % 4)
    try:
        value = binascii.a2b_base64(padded, strict_mode=True)
    except binascii.Error:
        raise MalformedToken("bad signature or malformed token") from None
    # One encoding per value: unused low bits of the last character must be zero, so a
    # signature cannot be re-spelled into a different token string that still verifies.
    if binascii.b2a_base64(value, newline=False) != padded:
        raise MalformedToken("bad signature or malformed token")
    return value


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MalformedToken(f"malformed {what}") from None
    if not isinstance(value, dict):
        raise MalformedToken(f"malformed {what}")
    return value


def parse_header(token: str) -> dict[str, Any]:
    """The (unverified) header of a compact JWS, strictly decoded: what picks the key
    when several may verify (an HMAC secret next to a key set). Nothing in it is
    trusted until the signature is checked with the key it led to.

    Raises:
        MalformedToken: not three segments, or the header is not a JSON object.
    """
    if token.count(".") != 2:
        raise MalformedToken("bad signature or malformed token")
    return _json_object(_segment(token.split(".", 1)[0]), "header")


def decode_hmac_jws(
    token: str, key: bytes, digests: dict[str, str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify ``token``'s signature with ``key`` and return (header, payload).

    ``digests`` maps each allowed ``alg`` to its hashlib name (a subset of
    :data:`HMAC_DIGESTS`). Claims are not checked here.

    Raises:
        MalformedToken: with ``"algorithm not allowed"``, ``"unsupported critical
            header"`` or another fixed message.
    """
    # Outside ASCII nothing can be a compact JWS; checked first so that no later step
    # (the signing input's encoding) meets such a character (issue 11: U+200B).
    # ``isascii`` is a flag CPython keeps on every str: free.
    if not token.isascii():
        raise MalformedToken("bad signature or malformed token")
    parts = token.split(".")
    if len(parts) != 3:
        raise MalformedToken("bad signature or malformed token")
    head, body, signature = parts
    header = _json_object(_segment(head), "header")
    alg = header.get("alg")
    digest = digests.get(alg) if isinstance(alg, str) else None
    if digest is None:
        raise MalformedToken("algorithm not allowed")
    expected = _hmac(key, f"{head}.{body}".encode("ascii"), digest)
    if not hmac.compare_digest(expected, _segment(signature)):
        raise MalformedToken("bad signature or malformed token")
    if "crit" in header:
        raise MalformedToken("unsupported critical header")
    if header.get("b64", True) is not True:
        raise MalformedToken("unencoded payloads are not supported")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise MalformedToken("malformed header")
    return header, _json_object(_segment(body), "claims")
