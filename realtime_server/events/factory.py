"""Build the event recorder and store from settings: PostgreSQL when
``REALTIME_DATABASE_URL`` is set, else the SQLite file at ``REALTIME_SQLITE_PATH``."""

from __future__ import annotations

from typing import Protocol

from ..config import Settings
from ..errors import ConfigError
from ..metrics import Metrics
from .buffer import BufferedRecorder
from .model import EventRecorder, NullRecorder
from .store import EventStore

__all__ = ["MeteredRecorder", "build_recorder", "build_store", "spill_path"]


class MeteredRecorder(EventRecorder, Protocol):
    """A recorder that can put its counters on ``/metrics``."""

    def bind_metrics(self, metrics: Metrics) -> None: ...


def build_store(
    settings: Settings, *, readonly: bool = False, timeout: float | None = None
) -> EventStore:
    """The configured store (not connected). ``readonly`` opens SQLite read-only
    (audit must not create an empty log where none is); ``timeout`` replaces
    ``REALTIME_EVENTS_TIMEOUT`` (``migrate`` allows long migrations more time)."""
    bound = settings.events_timeout if timeout is None else timeout
    if settings.database_url:
        scheme = settings.database_url.split("://", 1)[0].lower()
        if scheme not in ("postgres", "postgresql"):
            raise ConfigError("REALTIME_DATABASE_URL: expected a postgresql:// URL")
        from .postgres import PostgresStore

        return PostgresStore(
            settings.database_url, timeout=bound, connect_timeout=settings.events_timeout
        )
    from .sqlite import SqliteStore

    return SqliteStore(settings.sqlite_path, timeout=bound, readonly=readonly)


def spill_path(settings: Settings) -> str:
    """The spill file of this process: each ``serve --workers`` worker gets its own
    (``<path>.w<index>``), so that no two processes append to or replay the same file."""
    path = settings.events_spill_path
    return path if settings.worker_id is None else f"{path}.w{settings.worker_id}"


def build_recorder(settings: Settings) -> MeteredRecorder:
    """The node's recorder: batching writer in front of the configured store."""
    if not settings.events_enabled:
        return NullRecorder()
    return BufferedRecorder(
        build_store(settings),
        spill_path(settings),
        capacity=settings.events_buffer,
        batch_size=settings.events_batch,
        flush_interval=settings.events_flush_interval,
        timeout=settings.events_timeout,
        migrate=settings.events_migrate,
    )
