"""Load testing: ``realtime-server loadtest``.

Drives a running server (or one it starts itself) through the real protocol with many
authenticated clients from several generator processes, publishes at steady rates
through the HTTP server API, plain Redis ``PUBLISH`` or the Python publisher, and reports
connections, deliveries, publish-to-receive latency, losses, and the server's CPU and
memory per delivery and per connection.

The modules, each with one job: :mod:`.options` (the options, checked once) and
:mod:`.limits` (descriptors and ports); :mod:`.scenarios` (the presets);
:mod:`.runner` (the steps of a run); :mod:`.fleet` and :mod:`.pipes` (the child
processes), :mod:`.messages` (what goes over their pipes); :mod:`.generator`,
:mod:`.clients`, :mod:`.wsclient`, :mod:`.counters` and :mod:`.sioclient` (the
generator processes; the last one their Socket.IO mode, for the benchmarks' peers);
:mod:`.publisher`; :mod:`.storm` (reconnect storms); :mod:`.spawn` (servers started for
a run); :mod:`.result`, :mod:`.verdict` and :mod:`.report` (what a run measured, whether
it failed, the table); :mod:`.procfs`, :mod:`.netstat`, :mod:`.stats` and
:mod:`.progress` (measuring). The benchmarks in ``bench/`` use the same generator,
publisher and spawner.

Nothing here is imported by ``serve``: the ``realtime-server`` command line registers
``loadtest`` without importing this package.
"""

from __future__ import annotations

from .errors import LoadTestError, UsageError
from .options import Options
from .runner import LoadTest

__all__ = ["LoadTest", "LoadTestError", "Options", "UsageError"]
