"""Channel grammar (pure).

A channel name is ``namespace:id``. Namespace: ``[a-z][a-z0-9_-]{0,31}``. Id: 1 to 200
characters of ``[A-Za-z0-9_.@=|+:-]``, not starting with ``:`` and never containing
``..`` (``|``, ``+`` and ``:``: identity providers' subjects such as Auth0's
``auth0|5f7c...``, Keycloak's federated ``f:<uuid>:jane`` and plus-addressed emails name
personal channels; the first colon of a name ends its namespace). Anything else is a bad
request (107); a well-formed name in an unknown namespace is 102 (decided by the rules).
"""

from __future__ import annotations

import re
from typing import Final

from ..codes import BAD_REQUEST
from ..errors import CommandError
from ..values import immutable

__all__ = ["ChannelName", "parse_channel"]

_CHANNEL_RE: Final = re.compile(
    r"([a-z][a-z0-9_-]{0,31}):([A-Za-z0-9_.@=|+-][A-Za-z0-9_.@=|+:-]{0,199})"
)


@immutable
class ChannelName:
    namespace: str
    id: str

    def __str__(self) -> str:
        return f"{self.namespace}:{self.id}"


def parse_channel(name: str) -> ChannelName:
    """Split and validate a channel name.

    Raises:
        CommandError: (107 bad request) when ``name`` is not of the grammar.
    """
    match = _CHANNEL_RE.fullmatch(name) if isinstance(name, str) else None
    if match is None or ".." in match.group(2):
        raise CommandError(BAD_REQUEST, "bad channel name")
    return ChannelName(match.group(1), match.group(2))
