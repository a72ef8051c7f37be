"""The machinery of the settings table: how a field declares its variable, and how
text becomes a value and is checked.

:mod:`config` holds the table itself (:class:`config.Settings`): each field is declared
with :func:`setting` (default, help, bounds, placeholder, secrecy); :func:`variables_of`
reads the declarations back as :class:`Variable` rows, from which the environment
reader, the ``serve`` options, ``--help`` and the README table all follow.
"""

from __future__ import annotations

import math
import typing
from dataclasses import MISSING, dataclass, field, fields
from functools import cache
from typing import Any, Final

from .errors import ConfigError

__all__ = ["Variable", "check_value", "convert", "setting", "variables_of"]

_META: Final = "realtime_setting"


@dataclass(frozen=True, slots=True)
class Variable:
    """One configuration variable, as declared on its :class:`Settings` field."""

    name: str
    """The environment variable (``REALTIME_PORT``)."""
    field: str
    """The :class:`Settings` field (``port``)."""
    default: str | None
    """The default as text (what ``--help`` shows), None when unset by default."""
    help: str
    kind: type
    """``str``, ``int``, ``float`` or ``bool``: how text is converted."""
    minimum: float | None = None
    maximum: float | None = None
    secret: bool = False
    """Environment only: never an option, never shown, never logged."""
    metavar: str = "VALUE"
    option: str | None = None
    """The ``serve`` option (``--port``); None for secrets and internal variables."""
    internal: bool = False
    """Set by the server itself (a worker's index); not documented."""


@dataclass(frozen=True, slots=True)
class _Declared:
    help: str
    env: str | None
    minimum: float | None
    maximum: float | None
    secret: bool
    metavar: str | None
    option: str | None
    internal: bool


def setting(
    default: Any,
    help: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    secret: bool = False,
    metavar: str | None = None,
    env: str | None = None,
    option: str | None = None,
    internal: bool = False,
) -> Any:
    """Declare a :class:`Settings` field: its default, help text and bounds.

    ``env`` names the variable when it is not ``REALTIME_`` + the field name in upper
    case; ``option`` the ``serve`` option when it is not ``--`` + the field name with
    dashes. ``internal`` variables are set by the server itself (a worker's index) and
    are neither documented nor options.
    """
    declared = _Declared(help, env, minimum, maximum, secret, metavar, option, internal)
    return field(default=default, repr=not secret, metadata={_META: declared})


def _kind(annotation: Any) -> type:
    """``int`` for ``int`` and ``int | None``, and so on."""
    if isinstance(annotation, type):
        return annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if len(args) == 1 and isinstance(args[0], type):
        return args[0]
    raise TypeError(f"unsupported setting type {annotation!r}")


def _default_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@cache
def variables_of(table: type) -> tuple[Variable, ...]:
    """The rows of a settings dataclass whose fields were declared with
    :func:`setting`, in field order."""
    hints = typing.get_type_hints(table)
    out: list[Variable] = []
    for f in fields(table):
        declared: _Declared = f.metadata[_META]
        kind = _kind(hints[f.name])
        option = None
        if not declared.secret and not declared.internal:
            option = declared.option or "--" + f.name.replace("_", "-")
        metavar = declared.metavar or ("SECRET" if declared.secret else "VALUE")
        out.append(
            Variable(
                name=declared.env or "REALTIME_" + f.name.upper(),
                field=f.name,
                default=_default_text(f.default if f.default is not MISSING else None),
                help=declared.help,
                kind=kind,
                minimum=declared.minimum,
                maximum=declared.maximum,
                secret=declared.secret,
                metavar=metavar,
                option=option,
                internal=declared.internal,
            )
        )
    return tuple(out)


def convert(var: Variable, raw: str) -> Any:
    """Text (an environment variable or an option) to the field's type."""
    if var.kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{var.name}: expected true or false")
    if var.kind is int:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{var.name}: expected an integer") from None
    if var.kind is float:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{var.name}: expected a number") from None
    return raw


def check_value(var: Variable, value: Any) -> None:
    """Type and bounds of one field, however the settings were built."""
    if value is None:
        if var.default is not None:
            raise ConfigError(f"{var.name}: must be set")
        return
    if var.kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value):
            raise ConfigError(f"{var.name}: must be a finite number")
    elif var.kind is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{var.name}: expected an integer")
    elif not isinstance(value, var.kind):
        raise ConfigError(f"{var.name}: expected {var.kind.__name__}")
    if var.minimum is not None and value < var.minimum:
        raise ConfigError(f"{var.name}: must be >= {_default_text(var.minimum)}")
    if var.maximum is not None and value > var.maximum:
        raise ConfigError(f"{var.name}: must be <= {_default_text(var.maximum)}")
