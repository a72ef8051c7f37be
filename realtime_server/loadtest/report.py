"""The final table of a load test, from its result dict (the same dict ``--json`` prints)."""

from __future__ import annotations

from typing import Any

__all__ = ["render"]


def _n(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and digits:
        return f"{value:,.{digits}f}"
    if isinstance(value, int | float):
        return f"{value:,.0f}"
    return str(value)


def _codes(table: dict[str, int]) -> str:
    if not table:
        return "none"
    items = sorted(table.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{k}: {v:,}" for k, v in items)


def render(r: dict[str, Any]) -> str:
    """A two-column table (what, value) in Markdown, then the notes."""
    c, p, d, lat, s = (
        r["connections"],
        r["publications"],
        r["deliveries"],
        r["latency_ms"],
        r["server"],
    )
    t = r["target"]
    target = t["url"] or "?"
    if t["spawned"]:
        target += f" (spawned: {t['engine']} engine, {t['workers']} worker(s))"
    rows: list[tuple[str, str]] = [
        ("scenario", f"{r['scenario']}: {r['plan']}"),
        ("target", target),
        ("publish path", t["publish_via"]),
        ("duration", f"{r['duration_s']:g} s of publications"),
        ("connections opened", f"{c['opened']:,} of {c['requested']:,}"),
        ("connections failed", _codes(c["failed"])),
        ("connect rate", f"{_n(c['connect_rate_per_s'])}/s (p50 {c['connect_p50_ms']} ms, "
         f"p99 {c['connect_p99_ms']} ms per connect)"),
        ("closed by server / network", _codes(c["closed"])),
        ("reconnects", f"{c['reconnects']:,}" + (
            f" (failed: {_codes(c['reconnect_failed'])})" if c["reconnect_failed"] else "")),
        ("publications", f"{p['published']:,} ({p['rate_per_s']:,}/s; publish p50 "
         f"{p['publish_p50_ms']} ms, p99 {p['publish_p99_ms']} ms)"),
        ("publish errors", _codes(p["errors"])),
        ("deliveries", f"{d['received']:,} live + {d['recovered']:,} recovered "
         f"(expected {d['expected']:,} to steady clients)"),
        ("deliveries/s", f"{d['per_s']:,.0f} over {d['window_s']:.1f} s"),
        ("latency ms", f"p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  "
         f"p99.9 {lat['p999']}  max {lat['max']}"),
        ("messages lost", f"{d['lost']:,} ({d['gaps']:,} gaps, {d['never_arrived']:,} never "
         f"arrived; {d['duplicates']:,} duplicates)"),
    ]  # fmt: skip
    if c["missing_subscriptions"]:
        rows.append(("subscriptions missing at connect", f"{c['missing_subscriptions']:,}"))
    if "cpu_us_per_delivery" in s:
        rows.append(
            (
                "server CPU",
                f"{s['cpu_s']} s over the publications ({s['cpu_busy_percent']}% of a core), "
                f"{_n(s['cpu_us_per_delivery'], 2)} us per delivery, "
                f"{_n(s['cpu_us_per_publication'], 1)} us per publication",
            )
        )
    if "rss_kib_per_conn" in s:
        connects = 1e6 / s["cpu_us_per_connect"] if s["cpu_us_per_connect"] > 0 else None
        rows.append(
            (
                "server memory",
                f"{s['rss_kib_per_conn']} KiB per connection "
                f"(RSS {s['rss_kib_before'] / 1024:,.1f} -> {s['rss_kib_after'] / 1024:,.1f} MiB)",
            )
        )
        rows.append(
            (
                "server CPU per connect",
                f"{s['cpu_us_per_connect']} us over {_n(s['connects_measured'])} connects "
                f"(at most {_n(connects)} connects/s per core)",
            )
        )
    if s.get("pid") is None:
        rows.append(("server CPU and memory", "unknown (give --server-pid, or use --spawn)"))
    ch = r.get("churn")
    if ch:
        rows.append(
            (
                "churn",
                f"{ch['opened']:,} connected and subscribed at {ch['rate_per_s']:g}/s, "
                f"{ch['closed']:,} closed, {ch['received']:,} deliveries; subscribe p50 "
                f"{ch['subscribe_p50_ms']} ms p99 {ch['subscribe_p99_ms']} ms; failed: "
                f"{_codes(ch['failed'])}",
            )
        )
    st = r.get("storm")
    if st:
        back = "not all back" if st["all_back_s"] is None else f"all back in {st['all_back_s']} s"
        rows.append(
            (
                "reconnect storm",
                f"drop by {st['drop']}: {st['dropped']:,} dropped, {st['reconnected']:,} "
                f"reconnected, {back}",
            )
        )
        rows.append(
            (
                "recovery",
                f"{st['subscriptions_recovered']:,} subscriptions recovered, "
                f"{st['subscriptions_not_recovered']:,} not; missed messages: "
                f"{st['missed_recovered']:,} recovered, {st['missed_lost']:,} lost",
            )
        )
    g = r["generators"]
    rows.append(
        (
            "generators",
            f"{g['processes']} processes, {_n(g['cpu_us_per_delivery'], 2)} us CPU per "
            f"delivery, the busiest {g['busiest_percent']}% of a core",
        )
    )
    by_source = c.get("by_source") or {}
    if len(by_source) > 1:
        rows.append(("connections by source address", _codes(by_source)))
    lim = r["limits"]
    server_files = lim["server_open_files"]
    rows.append(
        (
            "open-file limits",
            f"generator {lim['open_files_per_generator']:,} (needs {lim['generator_needs']:,}), "
            + (
                f"server {server_files:,} (needs {lim['server_needs']:,})"
                if server_files is not None
                else "server unknown"
            ),
        )
    )
    lq = r.get("listen_queue")
    rows.append(
        (
            "listen queue drops",
            f"ListenOverflows +{lq['overflows']:,}, ListenDrops +{lq['drops']:,} "
            "(this machine, during the run)"
            if lq is not None
            else "not measured (the server is not on this machine)",
        )
    )
    mach = r["machine"]
    speed = mach.get("reference_us")
    rows.append(
        (
            "machine",
            f"{mach['cpus']} CPUs, load average {mach['loadavg'][0]}, other work "
            f"{mach['other_load_cpus']} CPUs during the run; the load test itself "
            f"{_n(mach['loadtest_cpu_us_per_delivery'], 2)} us CPU per delivery"
            + (
                f"; reference workload {' -> '.join(_n(v, 0) for v in speed)} us "
                "(before -> after the run; CPU figures scale with it)"
                if speed
                else ""
            ),
        )
    )
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'what'.ljust(width)} | value |", f"|{'-' * (width + 2)}|---|"]
    lines += [f"| {k.ljust(width)} | {v} |" for k, v in rows]
    if r["notes"]:
        lines += ["", "Notes:", *(f"- {n}" for n in r["notes"])]
    if r.get("failures"):
        lines += ["", "FAILED:", *(f"- {f}" for f in r["failures"])]
    return "\n".join(lines)
