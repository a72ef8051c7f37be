"""Scenario presets: who connects, what they subscribe to, what gets published.

- ``broadcast``: every user on one document channel; publications to it at ``--rate``.
- ``signing-day``: ``--users`` (10,000) users and ``--documents`` (2,000) documents with
  ``--participants`` (5) each; document status events at ``--doc-rate`` per second in
  all (each document in turn), plus personal notifications on ``user:<id>`` at
  ``--user-rate`` per second in all (each user in turn).
- ``churn``: the signing-day layout, smaller by default, with ``--churn-rate`` extra
  connections per second that connect, subscribe to a random document with a
  subscription token, stay ``--churn-lifetime`` seconds and disconnect, while
  publications flow.
- ``reconnect-storm``: the signing-day layout; at ``--storm-at`` every client is dropped
  at once (``--drop``: the server API's ``disconnect`` with code 3001 for every user,
  a server restart with ``--spawn``, or a reset of every socket by the generators) and
  comes back after a random delay of up to ``--reconnect-delay`` seconds, asking to
  recover its channels from its last offsets, while publications go on.

User and document ids carry a per-run prefix, so runs never see each other's traffic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["DEFAULTS", "SCENARIOS", "Plan", "build_plan"]

SCENARIOS: Final = ("broadcast", "signing-day", "churn", "reconnect-storm")

DEFAULTS: Final[dict[str, dict[str, Any]]] = {
    "broadcast": {"users": 1000, "rate": 10.0, "duration": 20.0},
    "signing-day": {
        "users": 10_000,
        "documents": 2_000,
        "participants": 5,
        "doc_rate": 200.0,
        "user_rate": 100.0,
        "duration": 30.0,
    },
    "churn": {
        "users": 1_000,
        "documents": 200,
        "participants": 5,
        "doc_rate": 100.0,
        "user_rate": 20.0,
        "churn_rate": 50.0,
        "churn_lifetime": 5.0,
        "duration": 30.0,
    },
    "reconnect-storm": {
        "users": 2_000,
        "documents": 400,
        "participants": 5,
        "doc_rate": 100.0,
        "user_rate": 50.0,
        "duration": 30.0,
    },
}


@dataclass
class Plan:
    """What one run does."""

    scenario: str
    prefix: str
    users: list[tuple[str, tuple[str, ...]]]
    """Each user's id and the document channels in its token's ``channels`` claim."""
    streams: list[dict[str, Any]]
    """Publication streams: ``channels`` (round robin), ``rate`` (per second), ``kind``."""
    documents: list[str] = field(default_factory=list)
    churn_rate: float = 0.0
    churn_lifetime: float = 0.0
    storm_at: float | None = None
    spawn_namespaces: dict[str, Any] | None = None
    """Namespace options for a server started with ``--spawn``."""

    def describe(self) -> str:
        def n(count: int, what: str) -> str:
            return f"{count:,} {what}" + ("" if count == 1 else "s")

        docs = len(self.documents)
        parts = [n(len(self.users), "user")]
        if docs:
            parts.append(n(docs, "document"))
        for s in self.streams:
            parts.append(f"{s['kind']} {s['rate']:g}/s over {n(len(s['channels']), 'channel')}")
        if self.churn_rate:
            parts.append(f"churn {self.churn_rate:g}/s x {self.churn_lifetime:g}s")
        if self.storm_at is not None:
            parts.append(f"storm at {self.storm_at:g}s")
        return ", ".join(parts)


def _layout(
    prefix: str, users: int, documents: int, participants: int
) -> tuple[list[tuple[str, tuple[str, ...]]], list[str]]:
    """Users ``<prefix>u<n>`` and documents ``document:<prefix>d<n>``; document ``d`` has
    users ``d*P .. d*P+P-1`` (modulo the user count) as participants, so that with the
    defaults every user takes part in exactly one document."""
    names = [f"{prefix}u{n}" for n in range(users)]
    docs = [f"document:{prefix}d{d}" for d in range(documents)]
    member: list[list[str]] = [[] for _ in range(users)]
    if users:
        for d, doc in enumerate(docs):
            for k in range(min(participants, users)):
                member[(d * participants + k) % users].append(doc)
    return [(names[i], tuple(member[i])) for i in range(users)], docs


def build_plan(scenario: str, prefix: str, o: dict[str, Any]) -> Plan:
    """The plan for ``scenario`` with options ``o`` (defaults from :data:`DEFAULTS`)."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}")
    opts = {**DEFAULTS[scenario], **{k: v for k, v in o.items() if v is not None}}
    users = int(opts["users"])
    if scenario == "broadcast":
        channel = f"document:{prefix}all"
        layout: list[tuple[str, tuple[str, ...]]] = [
            (f"{prefix}u{n}", (channel,)) for n in range(users)
        ]
        return Plan(
            scenario,
            prefix,
            layout,
            [{"channels": [channel], "rate": float(opts["rate"]), "kind": "broadcast"}],
            documents=[channel],
            # N connections joining one channel would push N^2/2 join messages.
            spawn_namespaces={"document": {"join_leave": False}},
        )
    layout, docs = _layout(prefix, users, int(opts["documents"]), int(opts["participants"]))
    user_channels = [f"user:{name}" for name, _ in layout]
    streams = [
        {"channels": docs, "rate": float(opts["doc_rate"]), "kind": "status"},
        {"channels": user_channels, "rate": float(opts["user_rate"]), "kind": "notification"},
    ]
    plan = Plan(scenario, prefix, layout, streams, documents=docs)
    if scenario == "churn":
        plan.churn_rate = float(opts["churn_rate"])
        plan.churn_lifetime = float(opts["churn_lifetime"])
    elif scenario == "reconnect-storm":
        at = opts.get("storm_at")
        plan.storm_at = float(at) if at is not None else float(opts["duration"]) / 3.0
    return plan
