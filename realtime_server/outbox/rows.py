"""Running one outbox row through the HTTP server API's code, and what became of it.

A row's ``method`` is one of the API methods that change something (:data:`METHODS`)
and its ``payload`` that method's JSON body. A ``publish`` or ``broadcast`` carries the
idempotency key ``outbox:<id>`` (unless its payload names one), so a row run twice (its
node killed, or its database gone, between running it and committing its deletion) is
delivered once. The other methods have no such key: run twice, they act twice
(disconnecting a user again, revoking again), which is harmless for revocations.

Outcomes:

- ``DONE``: it ran; the row is deleted.
- ``FAILED``: it can never run (unknown method, payload not an object, a refused call:
  107 bad request, 102 unknown channel...); the row moves to ``realtime_outbox_failed``
  with the error and the partition goes on.
- ``RETRY``: a temporary failure (Redis unreachable, error 100); the row stays first in
  line and is retried with backoff.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson

from ..errors import BackendUnavailable, CommandError

__all__ = ["METHODS", "Execute", "Outcome", "Result", "run_row"]

logger = logging.getLogger("realtime_server.outbox")

METHODS: Final = frozenset(
    {"publish", "broadcast", "disconnect", "unsubscribe", "revoke_token", "invalidate_user_tokens"}
)
"""The API methods a row may name."""

Execute = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
"""Runs one API method with its body and returns its result (``api.execute`` bound to
the node); raises CommandError or BackendUnavailable like the API does."""

_ERROR_MAX: Final = 500


class Result(enum.Enum):
    DONE = "done"
    FAILED = "failed"
    RETRY = "retry"


@dataclass(frozen=True, slots=True)
class Outcome:
    result: Result
    error: str = ""
    """Why it failed or must be retried (stored in ``realtime_outbox_failed.error``)."""


_DONE: Final = Outcome(Result.DONE)


def _failed(error: str) -> Outcome:
    return Outcome(Result.FAILED, error[:_ERROR_MAX])


async def run_row(execute: Execute, row_id: int, method: str, payload: str) -> Outcome:
    """Run row ``row_id``; never raises (except cancellation)."""
    if method not in METHODS:
        return _failed(f"unknown method {method[:64]!r}")
    try:
        params = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return _failed("payload is not JSON")
    if not isinstance(params, dict):
        return _failed("payload must be a JSON object")
    if method in ("publish", "broadcast") and not params.get("idempotency_key"):
        params["idempotency_key"] = f"outbox:{row_id}"
    try:
        result = await execute(method, params)
    except CommandError as exc:
        if exc.error.temporary:
            return Outcome(Result.RETRY, f"{exc.error.code} {exc}")
        return _failed(f"{exc.error.code} {exc}")
    except BackendUnavailable as exc:
        return Outcome(Result.RETRY, str(exc))
    except Exception as exc:  # a bug, or a payload nobody anticipated: never block
        logger.exception("outbox row %d (%s) failed", row_id, method)
        return _failed(f"internal error ({type(exc).__name__})")
    if method == "broadcast":
        return _broadcast_outcome(params.get("channels", ()), result)
    return _DONE


def _broadcast_outcome(channels: Any, result: dict[str, Any]) -> Outcome:
    """A broadcast answers per channel: retried if any channel failed for a temporary
    reason (the channels already published are not published again: same key), failed
    if a channel was refused (the others were published)."""
    refused: list[str] = []
    for channel, response in zip(channels, result.get("responses", ()), strict=False):
        error = response.get("error")
        if error is None:
            continue
        if error.get("code") == 100:
            return Outcome(Result.RETRY, f"broadcast: 100 {error.get('message', '')}")
        refused.append(f"{str(channel)[:64]}: {error.get('code')} {error.get('message', '')}")
    if refused:
        return _failed("broadcast refused on some channels: " + "; ".join(refused))
    return _DONE
