"""Our own pub/sub connections (channels/redis_link.py, redis_pubsub.py): dialed like
redis-py would for the same URL (TLS with ``rediss://``, a user and password, a unix
socket, a database), one owner task per connection.

Private redis-servers: one with TLS (a throwaway CA and certificate made here) and an
ACL user; one on a unix socket.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from realtime_server.errors import BackendUnavailable
from realtime_server.redis.link import LinkOptions
from realtime_server.redis.pubsub import PubSubShard

from .conftest import StartServer, connected
from .helpers import MS, SCALE
from .redis_server import RedisServer, free_port

PASSWORD = "link-test-password-0123"


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for 127.0.0.1 signed by it: (ca, cert, key) PEM files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rt test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture
async def tls_redis(tmp_path: Path) -> AsyncIterator[tuple[RedisServer, int, Path]]:
    """A redis-server with a TLS port (and its plain port for the harness), and an ACL
    user ``alice``; yields (server, TLS port, CA file)."""
    ca, cert, key = _certificates(tmp_path)
    tls_port = free_port()
    server = RedisServer(
        extra=[
            "--tls-port", str(tls_port),
            "--tls-cert-file", str(cert),
            "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(ca),
            "--tls-auth-clients", "no",
        ]
    )  # fmt: skip
    try:
        await server.start()
        admin = aioredis.Redis.from_url(server.url)
        await admin.execute_command(
            "ACL", "SETUSER", "alice", "on", f">{PASSWORD}", "~*", "&*", "+@all"
        )
        await admin.aclose()
        yield server, tls_port, ca
    finally:
        await server.close()


class _Sink:
    def __init__(self) -> None:
        self.messages: asyncio.Queue[tuple[bytes, bytes]] = asyncio.Queue()
        self.ups = 0

    async def on_message(self, channel: bytes, data: bytes) -> None:
        await self.messages.put((channel, data))

    async def on_up(self, shard: PubSubShard) -> None:
        self.ups += 1


def _shard(url: str, sink: _Sink, timeout: float = 2.0) -> PubSubShard:
    return PubSubShard(url, 0, "rt-test-anchor", sink.on_message, sink.on_up, timeout)


async def test_tls_with_a_user_and_password(tls_redis: tuple[RedisServer, int, Path]) -> None:
    server, tls_port, ca = tls_redis
    url = f"rediss://alice:{PASSWORD}@127.0.0.1:{tls_port}/0?ssl_ca_certs={ca}"
    options = LinkOptions.from_url(url)
    assert options.tls is not None and options.username == "alice"
    assert PASSWORD not in repr(options)
    sink = _Sink()
    shard = _shard(url, sink)
    shard.start()
    try:
        assert await shard.wait_ready(5000 * MS)
        await shard.subscribe("rt:{document:tls}")
        publisher = aioredis.Redis.from_url(server.url)
        try:
            assert await publisher.publish("rt:{document:tls}", b"over tls") == 1
        finally:
            await publisher.aclose()
        assert await asyncio.wait_for(sink.messages.get(), 2000 * MS) == (
            b"rt:{document:tls}",
            b"over tls",
        )
        await shard.unsubscribe("rt:{document:tls}")
        assert shard.channels == set()
    finally:
        await shard.close()


async def test_tls_verifies_the_certificate(tls_redis: tuple[RedisServer, int, Path]) -> None:
    _server, tls_port, _ca = tls_redis
    sink = _Sink()
    shard = _shard(f"rediss://alice:{PASSWORD}@127.0.0.1:{tls_port}/0", sink)  # no CA given
    shard.start()
    try:
        assert not await shard.wait_ready(1000 * MS)
        with pytest.raises(BackendUnavailable):
            await shard.subscribe("rt:{document:x}")
    finally:
        await shard.close()


async def test_wrong_password_never_logged(
    tls_redis: tuple[RedisServer, int, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _server, tls_port, ca = tls_redis
    wrong = "wrong-password-9876"
    sink = _Sink()
    shard = _shard(f"rediss://alice:{wrong}@127.0.0.1:{tls_port}/0?ssl_ca_certs={ca}", sink)
    shard.start()
    try:
        assert not await shard.wait_ready(1000 * MS)
    finally:
        await shard.close()
    assert "AUTH refused" in caplog.text
    assert wrong not in caplog.text and PASSWORD not in caplog.text


@pytest.fixture
async def unix_redis(tmp_path: Path) -> AsyncIterator[tuple[RedisServer, Path]]:
    socket_path = tmp_path / "redis.sock"
    server = RedisServer(extra=["--unixsocket", str(socket_path), "--unixsocketperm", "700"])
    try:
        await server.start()
        yield server, socket_path
    finally:
        await server.close()


async def test_unix_socket_and_database(unix_redis: tuple[RedisServer, Path]) -> None:
    server, socket_path = unix_redis
    sink = _Sink()
    shard = _shard(f"unix://{socket_path}?db=3", sink)
    assert LinkOptions.from_url(f"unix://{socket_path}?db=3").db == 3
    shard.start()
    try:
        assert await shard.wait_ready(5000 * MS)
        await shard.subscribe("rt:{user:1}")
        publisher = aioredis.Redis.from_url(server.url)
        try:
            assert await publisher.publish("rt:{user:1}", b"local") == 1
        finally:
            await publisher.aclose()
        assert (await asyncio.wait_for(sink.messages.get(), 2000 * MS))[1] == b"local"
    finally:
        await shard.close()


async def test_server_over_tls_end_to_end(
    tls_redis: tuple[RedisServer, int, Path], start_server: StartServer
) -> None:
    """A whole node on ``rediss://`` (connects, reads and presence on our command link,
    pub/sub on ours too)."""
    _server, tls_port, ca = tls_redis
    url = f"rediss://alice:{PASSWORD}@127.0.0.1:{tls_port}/0?ssl_ca_certs={ca}"
    server = await start_server(REDIS_URL=url)
    client = await connected(server, "7", channels=["document:tls"])
    await server.node.ops.publish("document:tls", b'{"signed":true}')
    assert (await client.push("pub"))["pub"]["data"] == {"signed": True}


async def test_concurrent_subscribes_share_commands_and_an_error_fails_its_command() -> None:
    """Subscribes queued together leave as one SUBSCRIBE (each channel confirmed); an
    error reply fails every channel of its command and nothing else (the link stays
    in step). A user allowed only ``ok*`` channels shows both."""
    server = RedisServer()
    await server.start()
    admin = aioredis.Redis.from_url(server.url)
    sink = _Sink()
    shard = _shard(f"redis://limited:{PASSWORD}@127.0.0.1:{server.port}/0", sink)
    try:
        await admin.execute_command(
            "ACL", "SETUSER", "limited", "on", f">{PASSWORD}", "~*", "&ok*", "&rt-test-anchor",
            "+@all",
        )  # fmt: skip
        shard.start()
        assert await shard.wait_ready(5000 * MS)
        await admin.config_resetstat()
        names = [f"ok:{i}" for i in range(40)]
        await asyncio.gather(*(shard.subscribe(n) for n in names))
        stats = await admin.info("commandstats")
        assert stats["cmdstat_subscribe"]["calls"] < len(names)  # batched
        assert shard.channels == set(names)
        assert (await admin.pubsub_numsub(*names)) == [(n.encode(), 1) for n in names]
        denied = await asyncio.gather(
            shard.subscribe("ok:also"), shard.subscribe("no:way"), return_exceptions=True
        )
        assert all(isinstance(d, BackendUnavailable) for d in denied), denied
        assert "ok:also" not in shard.channels and "no:way" not in shard.channels
        await shard.subscribe("ok:after")  # the link is still in step
        assert shard.ready and "ok:after" in shard.channels
        assert await admin.publish("ok:after", b"hello") == 1
        assert await asyncio.wait_for(sink.messages.get(), 2000 * MS) == (b"ok:after", b"hello")
    finally:
        await shard.close()
        await admin.aclose()
        await server.close()


async def test_an_unconfirmed_subscribe_fails_within_the_timeout() -> None:
    server = RedisServer()
    await server.start()
    sink = _Sink()
    shard = _shard(server.url, sink, timeout=0.5)
    try:
        shard.start()
        assert await shard.wait_ready(5000 * MS)
        await shard.subscribe("rt:{user:1}")
        assert server.proc is not None
        server.proc.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        try:
            with pytest.raises(BackendUnavailable):
                await shard.subscribe("rt:{user:2}")
        finally:
            server.proc.send_signal(signal.SIGCONT)
        assert time.monotonic() - started < 0.5 + 0.15 * SCALE
        assert shard.channels == {"rt:{user:1}"}  # undone
    finally:
        await shard.close()
        await server.close()
