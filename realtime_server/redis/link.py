"""Dialing a Redis connection of our own: URL, TLS, AUTH, SELECT; RESP encoding.

The pub/sub shards (:mod:`.pubsub`) own their connections outright, on asyncio
streams with ``hiredis.Reader`` for parsing, so that exactly one task ever reads each
one. This module opens such a connection the way redis-py would for the same URL (its
``parse_url`` reads the URL): ``redis://`` (TCP), ``rediss://`` (TLS, with the
``ssl_*`` query options redis-py understands: ``ssl_cert_reqs``, ``ssl_ca_certs``,
``ssl_ca_path``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_check_hostname``), and
``unix://`` sockets; ``AUTH`` with the URL's user name and password; ``SELECT`` when
the URL names a database other than 0 (pub/sub channels do not depend on it, but a
proxy might). Credentials are never part of an error message.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import hiredis
from redis.asyncio.connection import parse_url

from ..errors import BackendUnavailable

__all__ = ["LinkOptions", "dial", "encode_command", "open_link"]


def encode_command(*args: str | bytes) -> bytes:
    """One RESP command (an array of bulk strings)."""
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]  # stub: 1-tuple
    return packed


@dataclass(frozen=True, slots=True)
class LinkOptions:
    """Where and how to connect (from a Redis URL)."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None
    """A unix socket (``unix://``)."""
    username: str | None = None
    password: str | None = None
    db: int = 0
    tls: ssl.SSLContext | None = None

    def __repr__(self) -> str:  # never the password
        where = self.path or f"{self.host}:{self.port}"
        return f"LinkOptions({where}, db={self.db}, tls={self.tls is not None})"

    @classmethod
    def from_url(cls, url: str) -> LinkOptions:
        parsed: dict[str, Any] = dict(parse_url(url))
        tls = None
        connection_class = parsed.get("connection_class")
        if connection_class is not None and "SSL" in connection_class.__name__:
            tls = _tls_context(parsed)
        return cls(
            host=str(parsed.get("host", "localhost")),
            port=int(parsed.get("port", 6379)),
            path=parsed.get("path"),
            username=parsed.get("username"),
            password=parsed.get("password"),
            db=int(parsed.get("db", 0) or 0),
            tls=tls,
        )


_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def _tls_context(parsed: dict[str, Any]) -> ssl.SSLContext:
    context = ssl.create_default_context(
        cafile=parsed.get("ssl_ca_certs"), capath=parsed.get("ssl_ca_path")
    )
    reqs = parsed.get("ssl_cert_reqs", "required")
    mode = _CERT_REQS.get(str(reqs).lower(), ssl.CERT_REQUIRED) if isinstance(reqs, str) else reqs
    check = parsed.get("ssl_check_hostname")
    if isinstance(check, str):
        check = check.lower() in ("1", "true", "yes", "on")
    context.check_hostname = bool(check if check is not None else mode != ssl.CERT_NONE)
    context.verify_mode = mode
    certfile = parsed.get("ssl_certfile")
    if certfile:
        context.load_cert_chain(certfile, parsed.get("ssl_keyfile"))
    return context


P = TypeVar("P", bound=asyncio.BaseProtocol)


async def dial(options: LinkOptions, factory: Callable[[], P]) -> tuple[asyncio.Transport, P]:
    """Open the TCP, TLS or unix socket connection ``options`` name, with the protocol
    ``factory`` makes (no AUTH nor SELECT: the caller's protocol does them). Raises
    OSError (ssl.SSLError included) as the event loop does."""
    loop = asyncio.get_running_loop()
    if options.path is not None:
        transport, protocol = await loop.create_unix_connection(factory, options.path)
    else:
        transport, protocol = await loop.create_connection(
            factory,
            options.host,
            options.port,
            ssl=options.tls,
            server_hostname=options.host if options.tls is not None else None,
        )
    return transport, protocol


async def _expect_ok(reader: asyncio.StreamReader, parser: hiredis.Reader, what: str) -> None:
    while (reply := parser.gets()) is False:
        data = await reader.read(4096)
        if not data:
            raise BackendUnavailable(f"redis closed the connection during {what}")
        parser.feed(data)
    if isinstance(reply, hiredis.ReplyError):
        # The error's text names the failure (WRONGPASS...), never the password.
        raise BackendUnavailable(f"redis {what} refused: {str(reply).split(' ', 1)[0]}")


async def open_link(
    options: LinkOptions, within: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect, authenticate and select the database, all within ``within`` seconds.

    Raises:
        BackendUnavailable: the connection or the handshake failed.
    """
    try:
        async with asyncio.timeout(within):
            if options.path is not None:
                reader, writer = await asyncio.open_unix_connection(options.path)
            else:
                reader, writer = await asyncio.open_connection(
                    options.host,
                    options.port,
                    ssl=options.tls,
                    server_hostname=options.host if options.tls is not None else None,
                )
            try:
                parser = hiredis.Reader()
                if options.password is not None:
                    auth: tuple[str, ...] = (options.password,)
                    if options.username:
                        auth = (options.username, options.password)
                    writer.write(encode_command("AUTH", *auth))
                    await _expect_ok(reader, parser, "AUTH")
                if options.db:
                    writer.write(encode_command("SELECT", str(options.db)))
                    await _expect_ok(reader, parser, "SELECT")
            except BaseException:
                writer.transport.abort()
                raise
    except BackendUnavailable:
        raise  # (a ConnectionError: not to be caught below)
    except TimeoutError:
        raise BackendUnavailable("redis connect timed out") from None
    except (OSError, ssl.SSLError) as exc:
        raise BackendUnavailable(f"redis connect: {type(exc).__name__}") from None
    return reader, writer
