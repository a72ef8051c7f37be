"""Load testing: ``realtime-server loadtest``.

Drives a running server (or one it starts itself) through the real protocol with many
authenticated clients from several generator processes, publishes at steady rates
through the HTTP server API, plain Redis ``PUBLISH`` or the Python publisher, and reports
connections, deliveries, publish-to-receive latency, losses, and the server's CPU and
memory per delivery and per connection. See :mod:`.scenarios` for the presets and
:mod:`.runner` for the steps of a run.
"""

from __future__ import annotations

from .runner import LoadTest, LoadTestError, Options

__all__ = ["LoadTest", "LoadTestError", "Options"]
