"""Transactional publishing: the PostgreSQL outbox (``REALTIME_OUTBOX_URL``).

An application inserts rows into ``realtime_outbox`` (or calls ``realtime_publish``) in
the transaction that makes the change they announce; every node with
``REALTIME_OUTBOX_URL`` consumes the committed rows, each partition by one node at a
time, in id order, running each row through the HTTP server API's code.

- :mod:`.schema`: the versioned migrations (``realtime-server migrate``) and the SQL;
- :mod:`.consumer`: partitions, locks, LISTEN and polling, batches, retries;
- :mod:`.rows`: running one row and classifying the outcome;
- :mod:`.status`: ``realtime-server outbox status``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .consumer import OutboxConsumer

if TYPE_CHECKING:
    from ..config import Settings
    from ..errors import CommandError
    from ..node import Node
    from ..operations import Operations

__all__ = ["OutboxConsumer", "attach"]


def attach(node: Node, settings: Settings) -> OutboxConsumer:
    """A consumer of ``settings.outbox_url`` running rows on ``node`` (not started),
    watched by ``/readyz`` (``degraded``) and counted in ``/metrics``."""
    assert settings.outbox_url
    consumer = OutboxConsumer(
        settings.outbox_url,
        _ApiRunner(node.ops),
        partitions=settings.outbox_partitions,
        poll_interval=settings.outbox_poll_interval,
        idle_timeout=settings.outbox_idle_timeout,
    )
    node.health.watch("outbox", consumer.problem)
    consumer.bind_metrics(node.metrics)
    return consumer


class _ApiRunner:
    """Rows run through the HTTP server API's own functions (``api.execute`` and
    ``api.publish_batch``) on the node's operations: a row behaves exactly as the same
    call of the API."""

    def __init__(self, ops: Operations) -> None:
        self.ops = ops

    async def execute(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        from ..api import execute

        return await execute(self.ops, method, params)

    async def publish_batch(
        self, bodies: Sequence[dict[str, Any]]
    ) -> list[dict[str, Any] | CommandError]:
        from ..api import publish_batch

        return await publish_batch(self.ops, bodies)
