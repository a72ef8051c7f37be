"""No token or credential in any log line, at any level (issue 11, item 8).

A real server process at ``REALTIME_LOG_LEVEL=DEBUG`` (websockets then logs request
lines, headers and frames) receives tokens in the query string, in an
``Authorization`` header, in a cookie, in ``Sec-WebSocket-Protocol`` and in ``connect``
commands, and API calls carrying ``X-API-Key``: none of these secrets may appear in its
stderr. Plus unit tests of :func:`realtime_server.logscrub.scrub`.
"""

from __future__ import annotations

import logging

import aiohttp
import pytest
from websockets.asyncio.client import connect

from realtime_server.logscrub import REDACTED, ScrubFilter, install, scrub

from .helpers import API_KEY, SECRET, RawClient, token
from .procs import server_process


def _secret_parts(tok: str) -> list[str]:
    """What must never appear: the token and its payload and signature segments."""
    _head, body, sig = tok.split(".")
    return [tok, body, sig, body[-12:], sig[:12]]


async def test_debug_log_of_a_server_holds_no_credential() -> None:
    in_query = token("query-user")
    in_header = token("header-user")
    in_cookie = token("cookie-user")
    in_protocol = "proto" + "x7" * 20
    in_connect = token("frame-user")
    cookie = "session=cookie-secret-0123456789"
    async with server_process(LOG_LEVEL="DEBUG") as server:
        url = server.ws_url
        # Query string and headers on the handshake; the connect command in a frame.
        async with connect(
            f"{url}?token={in_query}&cf_connect=1",
            additional_headers={"Authorization": f"Bearer {in_header}", "Cookie": cookie},
            subprotocols=["centrifuge-json", in_protocol],  # type: ignore[list-item]
        ) as ws:
            client = RawClient(ws)
            reply = await client.connect(in_connect)
            assert "connect" in reply, reply
        async with connect(
            url, additional_headers={"Cookie": f"token={in_cookie}; {cookie}"}
        ) as ws:
            assert "connect" in await RawClient(ws).connect(in_cookie)
        api = f"http://127.0.0.1:{server.api_port}/api"
        async with aiohttp.ClientSession() as http:
            for key in (API_KEY, "wrong-" + API_KEY):
                async with http.post(
                    f"{api}/publish?api_key={key}",
                    headers={"X-API-Key": key},
                    json={"channel": "user:query-user", "data": {"x": 1}},
                ) as response:
                    await response.read()
        await server.stop()  # SIGTERM; waits for the process and the end of its stderr
    log = "".join(server.log)
    assert "< GET /connection/websocket" in log, "websockets did not log at DEBUG"
    assert REDACTED in log
    secrets = [
        *_secret_parts(in_query),
        *_secret_parts(in_header),
        *_secret_parts(in_cookie),
        *_secret_parts(in_connect),
        in_protocol,
        cookie,
        "cookie-secret-0123456789",
        API_KEY,
        SECRET,
    ]
    leaked = [s for s in secrets if s in log]
    assert not leaked, f"{len(leaked)} secrets in the log"


@pytest.mark.parametrize(
    ("line", "kept", "gone"),
    [
        (
            "< GET /connection/websocket?token=abc.def.ghi HTTP/1.1",
            "GET /connection/websocket?",
            "abc",
        ),
        ("GET /x?a=1&b=2 HTTP/1.1", "HTTP/1.1", "a=1"),
        ("http://h:1/p?sessionid=s3cr3t", "http://h:1/p?", "s3cr3t"),
        ("< Authorization: Bearer s3cr3t-value", "Authorization: ", "s3cr3t"),
        ("< authorization:Basic dXNlcjpwYXNz", "authorization:", "dXNlcjpwYXNz"),
        ("< Cookie: sid=s3cr3t; other=1", "Cookie: ", "s3cr3t"),
        ("> Set-Cookie: sid=s3cr3t", "Set-Cookie: ", "s3cr3t"),
        ("< Sec-WebSocket-Protocol: centrifuge-json, s3cr3t", "Sec-WebSocket-Protocol", "s3cr3t"),
        ("< X-API-Key: s3cr3t", "X-API-Key: ", "s3cr3t"),
        ("headers {'X-API-Key': 's3cr3t', 'Host': 'h'}", "'Host': 'h'", "s3cr3t"),
        ('{"Authorization": "Bearer s3cr3t", "a": 1}', '"a": 1', "s3cr3t"),
        ("[('Cookie', 's3cr3t'), ('Host', 'h')]", "('Host', 'h')", "s3cr3t"),
        (
            """< TEXT '{"id":1,"connect":{"token":"abc.s3cr3t...' [300 bytes]""",
            "[300 bytes]",
            "s3cr3t",
        ),
        ('{"password": "s3cr3t"}', "password", "s3cr3t"),
        ("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.s3cr3t-sig_ok here", "here", "s3cr3t"),
        ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOi", "", "eyJzdWIiOi"),
        ("redis://user:s3cr3t@127.0.0.1:6379/0 down", "redis://user:", "s3cr3t"),
        ("dbname=x password=s3cr3t host=h", "host=h", "s3cr3t"),
    ],
)
def test_scrub(line: str, kept: str, gone: str) -> None:
    clean = scrub(line)
    assert gone not in clean
    assert kept in clean
    assert REDACTED in clean


@pytest.mark.parametrize(
    "line",
    [
        "realtime-server 0.1.0 listening on ws://127.0.0.1:8000/connection/websocket",
        "broker link restored; re-checking 12 connections",
        "session 1f0c: CONNECTING -> CONNECTED",
        "what? nothing",
    ],
)
def test_plain_lines_are_untouched(line: str) -> None:
    assert scrub(line) == line


def test_filter_scrubs_arguments_and_tracebacks() -> None:
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    logger = logging.getLogger("test.logscrub")
    logger.propagate = False
    handler = Keep()
    logger.addHandler(handler)
    install(logger)
    install(logger)  # idempotent
    assert sum(isinstance(f, ScrubFilter) for f in handler.filters) == 1
    try:
        logger.warning("request %s", "/p?token=s3cr3t")
        try:
            raise ValueError("bad header Authorization: Bearer s3cr3t")
        except ValueError:
            logger.exception("failed for %s", "/q?key=s3cr3t")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert len(records) == 2
    assert all("s3cr3t" not in r for r in records), records
    assert "ValueError" in records[1]
