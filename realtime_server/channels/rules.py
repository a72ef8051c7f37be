"""Who may subscribe to and publish in what (pure decisions, no I/O).

- ``user:<id>``: only the user whose ``sub`` is ``<id>``; the server subscribes every
  connection to its own user channel at connect.
- any other namespace (``document`` built in): a subscription token for exactly that
  channel and user, or the channel listed in the connection token's ``channels`` claim.
"""

from __future__ import annotations

from ..codes import PERMISSION_DENIED
from ..errors import CommandError
from .names import ChannelName
from .namespaces import NamespaceOptions

__all__ = ["check_client_publish", "check_subscribe", "needs_token", "user_channel"]


def user_channel(user: str) -> str:
    """The personal channel of ``user``."""
    return f"user:{user}"


def needs_token(options: NamespaceOptions) -> bool:
    """Whether a client-side subscription to this namespace needs a subscription token."""
    return options.access == "token"


def check_subscribe(
    channel: ChannelName,
    options: NamespaceOptions,
    user: str,
    *,
    token_channel: str | None = None,
    granted_at_connect: bool = False,
) -> None:
    """Decide whether ``user`` may subscribe to ``channel``.

    ``token_channel`` is the ``channel`` claim of a verified subscription token (its
    ``sub`` already matched ``user``); ``granted_at_connect`` is true for a channel from
    the connection token's ``channels`` claim.

    Raises:
        CommandError: 103 permission denied.
    """
    if options.access == "owner":
        if channel.id != user:
            raise CommandError(PERMISSION_DENIED)
        return
    if granted_at_connect:
        return
    if token_channel is None or token_channel != str(channel):
        raise CommandError(PERMISSION_DENIED)


def check_client_publish(options: NamespaceOptions, subscribed: bool) -> None:
    """Clients publish only where the namespace allows it, and only while subscribed."""
    if not options.allow_publish or not subscribed:
        raise CommandError(PERMISSION_DENIED)
