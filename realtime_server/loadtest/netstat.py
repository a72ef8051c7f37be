"""The kernel's counts of connections dropped at listening sockets (``/proc/net/netstat``).

``TcpExt: ListenOverflows`` counts connections that found a listening socket's accept
queue full; ``ListenDrops`` every SYN or handshake dropped at a listening socket (the
overflows included). They are the machine's (the network namespace's) counters, for
every listening socket at once: a load test reads them before and after a run against
a server on the same machine, and the difference is what its listen backlog cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["NETSTAT", "ListenCounters", "parse_netstat", "read_listen_counters"]

NETSTAT: Final = "/proc/net/netstat"


@dataclass(frozen=True, slots=True)
class ListenCounters:
    overflows: int
    drops: int

    def minus(self, earlier: ListenCounters) -> ListenCounters:
        return ListenCounters(self.overflows - earlier.overflows, self.drops - earlier.drops)


def parse_netstat(text: str) -> dict[str, dict[str, int]]:
    """``/proc/net/netstat`` (or ``/proc/net/snmp``): pairs of lines, names then values,
    each starting with the same ``Section:``; a malformed pair is skipped."""
    out: dict[str, dict[str, int]] = {}
    lines = text.splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        section, _, keys = names.partition(":")
        vsection, _, numbers = values.partition(":")
        if section != vsection or not section:
            continue
        try:
            out[section.strip()] = dict(
                zip(keys.split(), (int(v) for v in numbers.split()), strict=True)
            )
        except ValueError:
            continue
    return out


def read_listen_counters(path: str = NETSTAT) -> ListenCounters | None:
    """The machine's ListenOverflows and ListenDrops now; None where unreadable."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            tcp = parse_netstat(f.read()).get("TcpExt", {})
    except OSError:
        return None
    if "ListenOverflows" not in tcp or "ListenDrops" not in tcp:
        return None
    return ListenCounters(tcp["ListenOverflows"], tcp["ListenDrops"])
