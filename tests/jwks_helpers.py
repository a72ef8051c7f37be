"""Signing keys, their JWKs, and a local key-set server whose behaviour a test sets.

Keys are generated with ``cryptography`` and never touch the disk. The server is a
real aiohttp application on 127.0.0.1 (a free port), so the refresher is tested over
real HTTP: serving keys, rotating them, answering 500, hanging, streaming a huge body,
serving garbage, redirecting.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
import orjson
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

_RSA_CACHE: list[rsa.RSAPrivateKey] = []


@dataclass
class Signer:
    """A private key, the algorithm it signs with, and its public JWK."""

    private: PrivateKey
    alg: str
    kid: str | None
    extra: dict[str, Any] = field(default_factory=dict)
    """Members added to (or, with None, removed from) the published JWK."""

    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        out: dict[str, Any]
        if isinstance(public, rsa.RSAPublicKey):
            out = RSAAlgorithm.to_jwk(public, as_dict=True)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            out = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            out = OKPAlgorithm.to_jwk(public, as_dict=True)
        out = {k: v for k, v in out.items() if k in ("kty", "n", "e", "crv", "x", "y")}
        out["use"] = "sig"
        if self.kid is not None:
            out["kid"] = self.kid
        for key, value in self.extra.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = value
        return out

    def sign(
        self,
        user: str = "42",
        *,
        ttl: float = 3600,
        headers: dict[str, Any] | None = None,
        alg: str | None = None,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {
            "sub": user,
            "iat": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
        }
        payload.update(claims)
        head = dict(headers or {})
        if self.kid is not None:
            head.setdefault("kid", self.kid)
        return jwt.encode(payload, self.private, algorithm=alg or self.alg, headers=head)


def rsa_key() -> rsa.RSAPrivateKey:
    """A fresh 2048-bit RSA key (0.05-0.5 s each: a few are kept for reuse by kid)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def rsa_signer(kid: str | None = "rsa-1", alg: str = "RS256", fresh: bool = False) -> Signer:
    if fresh or not _RSA_CACHE:
        _RSA_CACHE.append(rsa_key())
    return Signer(_RSA_CACHE[-1], alg, kid)


def ec_signer(kid: str | None = "ec-1", curve: ec.EllipticCurve | None = None) -> Signer:
    curve = curve or ec.SECP256R1()
    alg = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}[curve.name]
    return Signer(ec.generate_private_key(curve), alg, kid)


def ed_signer(kid: str | None = "ed-1") -> Signer:
    return Signer(ed25519.Ed25519PrivateKey.generate(), "EdDSA", kid)


def key_set(*signers: Signer) -> dict[str, Any]:
    return {"keys": [s.jwk() for s in signers]}


class JwksServer:
    """A key-set endpoint at ``/jwks.json``. ``mode`` picks the answer: ``ok`` (the
    current ``document``), ``500``, ``hang``, ``huge``, ``garbage``, ``redirect`` (302 to
    ``/elsewhere.json``, which would serve the keys and counts its hits)."""

    def __init__(self, document: dict[str, Any] | None = None) -> None:
        self.document: dict[str, Any] = document or {"keys": []}
        self.mode = "ok"
        self.hits = 0
        self.elsewhere_hits = 0
        self.huge_written = 0
        self.huge_completed = False
        self.fetched = asyncio.Event()
        """Set after each answer (tests clear it, then wait for the next fetch)."""
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    def publish(self, *signers: Signer) -> None:
        self.document = key_set(*signers)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/jwks.json", self._jwks)
        app.router.add_get("/elsewhere.json", self._elsewhere)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/jwks.json"
        return self.url

    async def close(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _jwks(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        try:
            return await self._answer(request)
        finally:
            self.fetched.set()

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        mode = self.mode
        if mode == "500":
            return web.Response(status=500, text="oops")
        if mode == "hang":
            await self._release.wait()
            return web.Response(status=503)
        if mode == "garbage":
            return web.Response(body=b"<html>not a key set</html>", content_type="text/html")
        if mode == "redirect":
            raise web.HTTPFound("/elsewhere.json")
        if mode == "huge":
            response = web.StreamResponse()
            response.content_type = "application/json"
            await response.prepare(request)
            chunk = b" " * 65536
            try:
                for _ in range(1024):  # 64 MiB unless the client stops reading
                    await response.write(chunk)
                    self.huge_written += len(chunk)
                self.huge_completed = True
            except (ConnectionError, RuntimeError):
                pass  # the client went away: what the size cap should cause
            return response
        return web.Response(body=orjson.dumps(self.document), content_type="application/json")

    async def _elsewhere(self, request: web.Request) -> web.Response:
        self.elsewhere_hits += 1
        return web.Response(body=orjson.dumps(self.document), content_type="application/json")
