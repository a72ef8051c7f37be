"""The exception tree. Every error the server raises on purpose derives from
:class:`RealtimeError`::

    RealtimeError
    ├── ConfigError (ValueError)        bad or missing configuration: exit code 2
    ├── ProtocolViolation               the client broke the protocol: close with a code
    ├── CommandError                    one command failed: error reply, connection stays
    └── BackendUnavailable (ConnectionError)  Redis/Postgres/revocation store unreachable

Mapping errors to what the client sees happens in one place (``session.py``); internal
exception text never reaches a client.
"""

from __future__ import annotations

import os

from .codes import CloseCode, ErrorCode

__all__ = [
    "BackendUnavailable",
    "CommandError",
    "ConfigError",
    "ProtocolViolation",
    "RealtimeError",
    "database_failure",
    "describe_cause",
    "describe_database_error",
    "missing_dependency",
]


class RealtimeError(Exception):
    """Root of every exception raised on purpose by realtime-server."""


class ConfigError(RealtimeError, ValueError):
    """A configuration value is missing or malformed. The message names the variable."""


class ProtocolViolation(RealtimeError):
    """The client must be disconnected with ``close`` (a code from :mod:`codes`)."""

    def __init__(self, close: CloseCode, detail: str = "") -> None:
        super().__init__(detail or close.reason)
        self.close = close


class CommandError(RealtimeError):
    """The command fails with an error reply; the connection stays open."""

    def __init__(self, error: ErrorCode, detail: str = "") -> None:
        super().__init__(detail or error.message)
        self.error = error


class BackendUnavailable(RealtimeError, ConnectionError):
    """A backend (revocation store, broker, history) could not be reached in time
    (clients get error 100 ``temporary``)."""


def describe_cause(exc: BaseException, timeout: float | None = None) -> str:
    """Why a connection failed, in a few words safe to print: the operating system's
    reason (``Connection refused``, ``Name or service not known``) found anywhere in the
    exception's chain, ``no answer within Ns`` for a timeout, else the exception's type.

    Never the exception's own text: client libraries put connection parameters there,
    and a URL can hold a password.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, TimeoutError) or type(current).__name__ == "TimeoutError":
            return f"no answer within {timeout:g}s" if timeout else "timed out"
        if isinstance(current, OSError) and current.errno is not None:
            if current.errno > 0:
                return os.strerror(current.errno)
            if current.strerror:  # getaddrinfo's negative codes
                return current.strerror
        current = current.__cause__ or current.__context__
        if current is None:
            inner = getattr(exc, "os_error", None)  # aiohttp keeps it as an attribute
            if isinstance(inner, BaseException) and id(inner) not in seen:
                current = inner
    return type(exc).__name__


_DISTRIBUTIONS = {
    "redis": "redis[hiredis]",
    "hiredis": "redis[hiredis]",
    "asyncpg": "asyncpg",
    "uvloop": "uvloop",
    "aiohttp": "aiohttp",
    "jwt": "pyjwt[crypto]",
    "cryptography": "pyjwt[crypto]",
    "orjson": "orjson",
    "websockets": "websockets",
}


def missing_dependency(exc: ModuleNotFoundError) -> str:
    """One line for a module that is not installed: which package provides it and how
    to install the locked set."""
    module = (exc.name or "?").split(".")[0]
    package = _DISTRIBUTIONS.get(module, module)
    return (
        f"the Python package {package} is not installed (import {module} failed): install "
        "the locked dependencies with `make .venv/bin/.installed`, or "
        "`pip install -r requirements/main.txt`"
    )


def describe_database_error(exc: BaseException) -> str:
    """A PostgreSQL (asyncpg) error without connection parameters: the text of the
    server's and the OS's errors (which hold none), only the type of anything else (a
    configuration error could quote part of the DSN)."""
    sqlstate = getattr(exc, "sqlstate", None)
    trusted = isinstance(exc, OSError) or (
        type(exc).__module__.startswith("asyncpg.exc") and not isinstance(exc, ValueError)
    )
    text = str(exc).splitlines()[0] if trusted and str(exc) else ""
    name = type(exc).__name__
    return f"{name} {sqlstate}: {text}" if sqlstate else f"{name}: {text}" if text else name


def database_failure(exc: BaseException) -> str:
    """Why a PostgreSQL call failed, for a log line or ``/readyz``: no answer in time,
    a refusal (it answered with an error: a missing database, a wrong password, no
    privilege) or a connection that could not be made (the network, a closed port)."""
    if isinstance(exc, TimeoutError):
        return "PostgreSQL did not answer in time"
    if getattr(exc, "sqlstate", None):
        return f"PostgreSQL refused ({describe_database_error(exc)})"
    return f"PostgreSQL unreachable ({describe_database_error(exc)})"
