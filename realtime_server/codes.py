"""The one catalog of error codes and close codes this server sends.

Error replies use the wire reference's reserved codes (0-399). Close codes follow the
Centrifugo ranges: 3000-3499 and 4000-4499 make the SDKs reconnect, 3500-3999 and
4500-4999 stop them. Every reason here is short ASCII (a close reason may hold at most
123 bytes) and never parses as JSON (centrifuge-js would misread it).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ALREADY_SUBSCRIBED",
    "BAD_REQUEST",
    "CLOSE_BAD_REQUEST",
    "CLOSE_CHANNEL_LIMIT",
    "CLOSE_CONNECTION_LIMIT",
    "CLOSE_EXPIRED",
    "CLOSE_INSUFFICIENT_STATE",
    "CLOSE_INVALID_TOKEN",
    "CLOSE_NO_PONG",
    "CLOSE_SHUTDOWN",
    "CLOSE_SLOW",
    "CLOSE_STALE",
    "CLOSE_SUBSCRIPTION_EXPIRED",
    "CLOSE_TOKEN_REVOKED",
    "CLOSE_TOO_MANY_REQUESTS",
    "INTERNAL",
    "LIMIT_EXCEEDED",
    "METHOD_NOT_FOUND",
    "NOT_AVAILABLE",
    "PERMISSION_DENIED",
    "TOKEN_EXPIRED",
    "TOO_MANY_REQUESTS",
    "UNAUTHORIZED",
    "UNKNOWN_CHANNEL",
    "UNRECOVERABLE_POSITION",
    "UNSUBSCRIBE_EXPIRED",
    "UNSUBSCRIBE_INSUFFICIENT",
    "UNSUBSCRIBE_SERVER",
    "CloseCode",
    "ErrorCode",
]


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """An error reply: ``{"id": N, "error": {"code": ..., "message": ..., "temporary": ...}}``."""

    code: int
    message: str
    temporary: bool = False


@dataclass(frozen=True, slots=True)
class CloseCode:
    """A WebSocket close code with its reason and whether the SDKs reconnect after it."""

    code: int
    reason: str
    reconnect: bool


INTERNAL = ErrorCode(100, "internal server error", temporary=True)
UNAUTHORIZED = ErrorCode(101, "unauthorized")
UNKNOWN_CHANNEL = ErrorCode(102, "unknown channel")
PERMISSION_DENIED = ErrorCode(103, "permission denied")
METHOD_NOT_FOUND = ErrorCode(104, "method not found")
ALREADY_SUBSCRIBED = ErrorCode(105, "already subscribed")
LIMIT_EXCEEDED = ErrorCode(106, "limit exceeded")
BAD_REQUEST = ErrorCode(107, "bad request")
NOT_AVAILABLE = ErrorCode(108, "not available")
TOKEN_EXPIRED = ErrorCode(109, "token expired")
TOO_MANY_REQUESTS = ErrorCode(111, "too many requests", temporary=True)
UNRECOVERABLE_POSITION = ErrorCode(112, "unrecoverable position")

CLOSE_SHUTDOWN = CloseCode(3001, "shutdown", reconnect=True)
CLOSE_EXPIRED = CloseCode(3005, "connection expired", reconnect=True)
CLOSE_SUBSCRIPTION_EXPIRED = CloseCode(3006, "subscription expired", reconnect=True)
CLOSE_SLOW = CloseCode(3008, "slow", reconnect=True)
CLOSE_INSUFFICIENT_STATE = CloseCode(3010, "insufficient state", reconnect=True)
CLOSE_NO_PONG = CloseCode(3012, "no pong", reconnect=True)
CLOSE_TOO_MANY_REQUESTS = CloseCode(3013, "too many requests", reconnect=True)
CLOSE_INVALID_TOKEN = CloseCode(3500, "invalid token", reconnect=False)
CLOSE_BAD_REQUEST = CloseCode(3501, "bad request", reconnect=False)
CLOSE_STALE = CloseCode(3502, "stale", reconnect=False)
CLOSE_CONNECTION_LIMIT = CloseCode(3504, "connection limit", reconnect=False)
CLOSE_CHANNEL_LIMIT = CloseCode(3505, "channel limit", reconnect=False)
CLOSE_TOKEN_REVOKED = CloseCode(4501, "token revoked", reconnect=False)

# Codes of the ``unsubscribe`` push (below 2500: terminal; 2500 and above: resubscribe).
UNSUBSCRIBE_SERVER = (2000, "server unsubscribe")
UNSUBSCRIBE_INSUFFICIENT = (2500, "insufficient state")
UNSUBSCRIBE_EXPIRED = (2501, "subscription expired")
