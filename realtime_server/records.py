"""What a session records of its subscriptions (plain data; :mod:`subscriptions` owns
their life, :mod:`session` their token deadlines)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from .channels.namespaces import NamespaceOptions
from .expiry import Expiring
from .model import ClientInfo

__all__ = ["Deadline", "Ended", "Subscription"]


class Deadline(Expiring, Protocol):
    """A subscription token's deadline in the expiry wheel."""

    def cancel(self) -> None: ...


class Ended(enum.StrEnum):
    """Why a subscription ended (recorded in the event log as the unsubscribe reason)."""

    CLIENT = "client"
    DISCONNECT = "disconnect"
    EXPIRED = "expired"
    SERVER = "server"
    INSUFFICIENT_STATE = "insufficient state"


@dataclass(slots=True)
class Subscription:
    """A channel a session is subscribed to (server-side or client-side)."""

    channel: str
    options: NamespaceOptions
    client_info: ClientInfo
    """The subscriber as others see it (``chan_info`` from its subscription token)."""
    server_side: bool
    token_jti: str | None = None
    token_iat: float | None = None
    expires_at: float | None = None
    timer: Deadline | None = None
    """The subscription token's deadline, while it has one: ``timer.cancel()``."""
