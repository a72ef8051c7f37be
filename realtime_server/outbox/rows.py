"""Running outbox rows through the HTTP server API's code, and what became of each.

A row's ``method`` is one of the API methods that change something (:data:`METHODS`)
and its ``payload`` that method's JSON body. A ``publish`` or ``broadcast`` carries the
idempotency key ``outbox:<id>`` (unless its payload names one), so a row run twice (its
node killed, or its database gone, between running it and committing its deletion) is
delivered once. The other methods have no such key: run twice, they act twice
(disconnecting a user again, revoking again), which is harmless for revocations.

Consecutive ``publish`` rows are run together (``api.publish_batch``: the same checks
and the same node operation as the API's ``publish``, in one Redis round trip, in
order); any other row runs alone (``api.execute``).

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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import orjson

from ..errors import BackendUnavailable, CommandError

__all__ = ["METHODS", "Outcome", "Result", "Row", "Runner", "run_rows"]

logger = logging.getLogger("realtime_server.outbox")

METHODS: Final = frozenset(
    {"publish", "broadcast", "disconnect", "unsubscribe", "revoke_token", "invalidate_user_tokens"}
)
"""The API methods a row may name."""

Row = tuple[int, str, str]
"""(id, method, payload as JSON text)."""


class Runner(Protocol):
    """The HTTP server API's operations, bound to a node (see ``outbox.attach``)."""

    async def execute(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """``api.execute``: one method's result; raises CommandError or
        BackendUnavailable like the API does."""
        ...

    async def publish_batch(
        self, bodies: Sequence[dict[str, Any]]
    ) -> list[dict[str, Any] | CommandError]:
        """``api.publish_batch``: each publish's result or refusal, in order; raises
        BackendUnavailable."""
        ...


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


def _prepare(row_id: int, method: str, payload: str) -> dict[str, Any] | Outcome:
    """The row's parameters (with its idempotency key), or why it can never run."""
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
    return params


def _refused(exc: CommandError) -> Outcome:
    if exc.error.temporary:
        return Outcome(Result.RETRY, f"{exc.error.code} {exc}")
    return _failed(f"{exc.error.code} {exc}")


async def _run_one(runner: Runner, row_id: int, method: str, params: dict[str, Any]) -> Outcome:
    try:
        result = await runner.execute(method, params)
    except CommandError as exc:
        return _refused(exc)
    except BackendUnavailable as exc:
        return Outcome(Result.RETRY, str(exc))
    except Exception as exc:  # a bug, or a payload nobody anticipated: never block
        logger.exception("outbox row %d (%s) failed", row_id, method)
        return _failed(f"internal error ({type(exc).__name__})")
    if method == "broadcast":
        return _broadcast_outcome(params.get("channels", ()), result)
    return _DONE


async def _run_publishes(runner: Runner, run: list[tuple[int, dict[str, Any]]]) -> list[Outcome]:
    """Outcomes of consecutive publish rows; a Redis failure retries from the first
    (those that did go out are not delivered again: each has its key)."""
    try:
        results = await runner.publish_batch([params for _, params in run])
    except BackendUnavailable as exc:
        return [Outcome(Result.RETRY, str(exc))]
    except Exception as exc:
        logger.exception("outbox rows %d-%d (publish) failed", run[0][0], run[-1][0])
        return [_failed(f"internal error ({type(exc).__name__})") for _ in run]
    return [_refused(r) if isinstance(r, CommandError) else _DONE for r in results]


async def run_rows(runner: Runner, rows: Sequence[Row]) -> list[Outcome]:
    """Run ``rows`` in order; their outcomes, in the same order. A ``RETRY`` is the
    last outcome: the rows after it were not run. Never raises (but cancellation)."""
    outcomes: list[Outcome] = []
    run: list[tuple[int, dict[str, Any]]] = []

    async def flush() -> bool:
        """Run the pending publishes; False when one must be retried."""
        if run:
            outcomes.extend(await _run_publishes(runner, run))
            run.clear()
        return not outcomes or outcomes[-1].result is not Result.RETRY

    for row_id, method, payload in rows:
        prepared = _prepare(row_id, method, payload)
        if method == "publish" and not isinstance(prepared, Outcome):
            run.append((row_id, prepared))
            continue
        if not await flush():
            return outcomes
        if isinstance(prepared, Outcome):
            outcomes.append(prepared)
            continue
        outcomes.append(await _run_one(runner, row_id, method, prepared))
        if outcomes[-1].result is Result.RETRY:
            return outcomes
    await flush()
    return outcomes


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
