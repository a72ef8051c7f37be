"""Credentials never reach a log line: a filter that scrubs every record.

Tokens travel in places other libraries log verbatim at DEBUG: websockets logs the
request line (``GET /connection/websocket?token=... HTTP/1.1``), every request header
and the start of every frame (a ``connect`` command's token); an aiohttp access log
would log request lines. :class:`ScrubFilter`, installed on the root logger's handlers
by the logging setup (:func:`install`), rewrites every record that passes through them,
whatever logger made it and at every level:

- query strings of URLs and request targets: ``/path?[redacted]``;
- the values of headers that carry credentials (``Authorization``,
  ``Proxy-Authorization``, ``Cookie``, ``Set-Cookie``, ``Sec-WebSocket-Protocol``,
  ``X-API-Key``), written as ``Name: value`` lines, ``'Name': 'value'`` mappings or
  ``('Name', 'value')`` pairs;
- JSON members named ``token``, ``password``, ``secret`` or ``api_key`` (a ``connect``
  or ``subscribe`` command shown in a frame, even cut short);
- anything shaped like a compact JWS/JWT (``eyJ...``), wherever it appears;
- passwords in URLs (``redis://user:[redacted]@host``) and ``password=`` pairs.

The message is rendered once (``record.getMessage()``) and replaced by its scrubbed
text; a traceback is rendered and scrubbed into ``record.exc_text``, which formatters
use as is. A record with nothing to scrub is left untouched.
"""

from __future__ import annotations

import logging
import re
from typing import Final

__all__ = ["REDACTED", "ScrubFilter", "install", "scrub"]

REDACTED: Final = "[redacted]"

_HEADERS: Final = (
    r"authorization|proxy-authorization|cookie|set-cookie|sec-websocket-protocol|x-api-key"
)
_RULES: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    # A compact JWS anywhere (its header always starts with '{"' -> "eyJ"), even cut short.
    (re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){0,2}"), REDACTED),
    # 'Name': 'value' / "Name": "value" / ('Name', 'value'): up to the closing quote.
    (
        re.compile(rf"""(?i)(["'])({_HEADERS})\1(\s*[:,]\s*)(["'])(?:\\.|(?!\4).)*\4?"""),
        rf"\1\2\1\3\4{REDACTED}\4",
    ),
    # Name: value (an HTTP header line): up to the end of the line.
    (re.compile(rf"(?im)(?<![\w-])({_HEADERS})([ \t]*:[ \t]*)[^\r\n]*"), rf"\1\2{REDACTED}"),
    # JSON members holding credentials: "token": "...", up to the closing quote (or the
    # single quote ending the repr of a frame that websockets cut short).
    (
        re.compile(r"""(?i)("(?:token|password|secret|api_key|apikey)"\s*:\s*")(?:\\.|[^"\\'])*"""),
        rf"\1{REDACTED}",
    ),
    # user:password@ in URLs (redis://, postgresql://).
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@]*):[^\s/@]+@"), rf"\1:{REDACTED}@"),
    # password=... (libpq key-value strings, query-like text).
    (re.compile(r"(?i)\b(password|passwd|pwd)=[^\s&;]+"), rf"\1={REDACTED}"),
    # The query string of a URL or request target: everything after "?" up to a space
    # or a quote (tokens in ?token=..., whatever the parameter is called).
    (re.compile(r"""(?<=[\w/.\-~%])\?[^\s"'<>]+"""), f"?{REDACTED}"),
)


def scrub(text: str) -> str:
    """``text`` with every credential it might hold replaced by ``[redacted]``."""
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text


class ScrubFilter(logging.Filter):
    """A handler filter that scrubs each record (see the module docstring). It never
    drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let the handler report it as usual
            return True
        clean = scrub(message)
        if clean != message:
            record.msg = clean
            record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = _FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True


_FORMATTER: Final = logging.Formatter()


def install(logger: logging.Logger | None = None) -> ScrubFilter:
    """Add one :class:`ScrubFilter` to every handler of ``logger`` (the root logger by
    default: every logger that propagates to it, ours and the libraries', is covered).
    Idempotent."""
    target = logger if logger is not None else logging.getLogger()
    scrubber = ScrubFilter()
    for handler in target.handlers:
        if not any(isinstance(f, ScrubFilter) for f in handler.filters):
            handler.addFilter(scrubber)
    return scrubber
