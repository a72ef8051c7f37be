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

from .codes import CloseCode, ErrorCode

__all__ = [
    "BackendUnavailable",
    "CommandError",
    "ConfigError",
    "ProtocolViolation",
    "RealtimeError",
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
