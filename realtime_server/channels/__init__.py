"""Channels: grammar and namespaces, who may subscribe, and the engine interfaces
(broker, history, presence) with the embedded in-memory engine."""

from __future__ import annotations
