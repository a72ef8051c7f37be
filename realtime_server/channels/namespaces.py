"""Namespaces and their options.

Two namespaces are built in (``user`` and ``document``, see docs/PROTOCOL.md); operators may
change their options or add namespaces with ``REALTIME_NAMESPACES`` (a JSON object of
namespace name -> options). Every namespace other than ``user`` is private: a
subscription needs a subscription token or the connection token's ``channels`` claim,
or, for a namespace with ``subscribe_proxy``, the backend's yes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import field, fields, replace
from typing import Any, Final, Literal

from ..codes import UNKNOWN_CHANNEL
from ..errors import CommandError, ConfigError
from ..values import immutable
from .engine import HistoryOptions
from .names import ChannelName, parse_channel

__all__ = ["DEFAULT_NAMESPACES", "NamespaceOptions", "Namespaces"]

Access = Literal["owner", "token"]
_NAMESPACE_RE: Final = re.compile(r"[a-z][a-z0-9_-]{0,31}")


@immutable
class NamespaceOptions:
    """What a namespace offers. ``history_size`` 0 turns history (and recovery) off."""

    access: Access = "token"
    history_size: int = 100
    history_ttl: float = 300.0
    presence: bool = False
    join_leave: bool = False
    join_leave_limit: int = 100
    """Above this many subscribers of a channel on a node, join and leave pushes stop
    for it (presence still answers): each one costs a push to every subscriber, so a
    channel of N subscribers joining costs N squared. 0 means no bound."""
    allow_publish: bool = False
    subscribe_proxy: bool = False
    """Without a subscription token, ask the backend (``REALTIME_SUBSCRIBE_PROXY_URL``)
    whether the user may subscribe; a token, when sent, is checked as usual."""

    _history: HistoryOptions | None = field(default=None, init=False, repr=False, compare=False)
    """:meth:`history_options`, made once (it is asked on every subscribe and publish)."""

    def __post_init__(self) -> None:
        if self.history:
            history = HistoryOptions(self.history_size, self.history_ttl)
            object.__setattr__(self, "_history", history)  # read-only to the type checker

    @property
    def history(self) -> bool:
        return self.history_size > 0 and self.history_ttl > 0

    def history_options(self) -> HistoryOptions | None:
        """What the engine keeps for a channel of this namespace (None: no history)."""
        return self._history

    def announces(self, subscribers: int) -> bool:
        """Whether join/leave pushes go out for a channel with this many subscribers."""
        return self.join_leave and (
            self.join_leave_limit == 0 or subscribers <= self.join_leave_limit
        )


DEFAULT_NAMESPACES: Final[Mapping[str, NamespaceOptions]] = {
    "user": NamespaceOptions(access="owner", presence=False, join_leave=False),
    "document": NamespaceOptions(access="token", presence=True, join_leave=True),
}


class Namespaces:
    """The namespaces a node knows, by name."""

    def __init__(self, options: Mapping[str, NamespaceOptions] = DEFAULT_NAMESPACES) -> None:
        self._options = dict(options)

    def __contains__(self, name: object) -> bool:
        return name in self._options

    def __iter__(self) -> Any:
        return iter(self._options.items())

    def get(self, channel: ChannelName) -> NamespaceOptions:
        """The options of the channel's namespace.

        Raises:
            CommandError: (102 unknown channel) for a namespace the server does not know.
        """
        try:
            return self._options[channel.namespace]
        except KeyError:
            raise CommandError(UNKNOWN_CHANNEL) from None

    def resolve(self, name: str) -> tuple[ChannelName, NamespaceOptions]:
        """Parse ``name`` (107 when malformed) and find its namespace (102 when unknown)."""
        channel = parse_channel(name)
        return channel, self.get(channel)

    @classmethod
    def from_json(cls, overrides: Mapping[str, Any]) -> Namespaces:
        """Built-in namespaces updated with ``overrides`` (parsed ``REALTIME_NAMESPACES``).

        Raises:
            ConfigError: naming ``REALTIME_NAMESPACES`` when a name or option is malformed.
        """
        merged = dict(DEFAULT_NAMESPACES)
        known = {f.name: f.type for f in fields(NamespaceOptions) if f.init}
        for name, opts in overrides.items():
            if not _NAMESPACE_RE.fullmatch(name) or not isinstance(opts, dict):
                raise ConfigError(f"REALTIME_NAMESPACES: bad namespace {name!r}")
            base = merged.get(name, NamespaceOptions())
            for key, value in opts.items():
                if key not in known:
                    raise ConfigError(f"REALTIME_NAMESPACES: unknown option {name}.{key}")
                expected = type(getattr(base, key))
                if key == "access":
                    if value not in ("owner", "token") or name == "user":
                        raise ConfigError(f"REALTIME_NAMESPACES: bad access for {name}")
                elif expected is bool and not isinstance(value, bool):
                    raise ConfigError(f"REALTIME_NAMESPACES: {name}.{key} must be a boolean")
                elif expected is int and (
                    isinstance(value, bool) or not isinstance(value, int) or value < 0
                ):
                    raise ConfigError(f"REALTIME_NAMESPACES: {name}.{key} must be an integer >= 0")
                elif expected is float and (
                    isinstance(value, bool) or not isinstance(value, int | float) or value < 0
                ):
                    raise ConfigError(f"REALTIME_NAMESPACES: {name}.{key} must be >= 0")
                base = replace(base, **{key: expected(value)})
            if name == "user" and base.access != "owner":
                raise ConfigError("REALTIME_NAMESPACES: user namespace access is fixed")
            if base.subscribe_proxy and base.access != "token":
                raise ConfigError(
                    f"REALTIME_NAMESPACES: {name}.subscribe_proxy needs access token "
                    "(owner channels need no backend)"
                )
            merged[name] = base
        return cls(merged)
