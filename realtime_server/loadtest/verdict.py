"""Whether a run measured something: the failures that make ``loadtest`` exit non-zero.

A load test whose connections or publications failed measured the failure, not the
server: more than ``max_share`` of them failing (1% by default), nothing published,
nothing delivered, or (in a reconnect storm) clients not back by the end or connections
dropped at a full accept queue fails the run; each failure is named with its reasons.
"""

from __future__ import annotations

from typing import Any

__all__ = ["failures"]


def _reasons(table: dict[str, int], most: int = 3) -> str:
    items = sorted(table.items(), key=lambda kv: -kv[1])[:most]
    return ", ".join(f"{k}: {v:,}" for k, v in items)


def _share(what: str, failed: dict[str, int], tried: int, max_share: float) -> str | None:
    count = sum(failed.values())
    if count == 0 or tried <= 0 or count / tried <= max_share:
        return None
    return f"{what}: {count:,} of {tried:,} failed ({count / tried:.1%}; {_reasons(failed)})"


def failures(result: dict[str, Any], max_share: float) -> list[str]:
    """What went wrong in the run ``result`` (see :func:`.result.build_result`);
    empty when it measured what it set out to."""
    out: list[str] = []
    c, p, d = result["connections"], result["publications"], result["deliveries"]
    if c["opened"] == 0:
        out.append(f"no connection opened ({_reasons(c['failed']) or 'no reason known'})")
    else:
        found = _share("connections", c["failed"], c["requested"], max_share)
        if found:
            out.append(found)
    attempts = p["published"] + sum(p["errors"].values())
    if p["published"] == 0:
        out.append(f"nothing was published ({_reasons(p['errors']) or 'no publication tried'})")
    else:
        found = _share("publications", p["errors"], attempts, max_share)
        if found:
            out.append(found)
    if p["published"] and c["opened"] and d["received"] + d["recovered"] == 0:
        out.append("nothing was delivered")
    storm = result.get("storm")
    if storm is not None:
        found = _share("reconnects", c["reconnect_failed"], storm["dropped"], max_share)
        if found:
            out.append(found)
        elif storm["all_back_s"] is None and storm["dropped"]:
            out.append(
                f"reconnect storm: {storm['dropped'] - storm['reconnected']:,} of "
                f"{storm['dropped']:,} clients were not back by the end of the run"
            )
    churn = result.get("churn")
    if churn is not None:
        tried = churn["opened"] + sum(churn["failed"].values())
        found = _share("churn connections", churn["failed"], tried, max_share)
        if found:
            out.append(found)
    listen = result.get("listen_queue")
    if storm is not None and listen is not None and (listen["overflows"] or listen["drops"]):
        out.append(
            f"the kernel dropped connections at a full accept queue: ListenOverflows "
            f"+{listen['overflows']:,}, ListenDrops +{listen['drops']:,} during the run "
            "(/proc/net/netstat, this whole machine): raise REALTIME_BACKLOG and "
            "net.core.somaxconn"
        )
    return out
