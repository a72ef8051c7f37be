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

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Final

from .messages import Stream, UserSpec

__all__ = ["DEFAULTS", "SCENARIOS", "Plan", "Workload", "build_plan"]

SCENARIOS: Final = ("broadcast", "signing-day", "churn", "reconnect-storm")


@dataclass(frozen=True)
class Workload:
    """The sizes and rates of a run; None means the scenario's default."""

    users: int | None = None
    documents: int | None = None
    participants: int | None = None
    rate: float | None = None
    doc_rate: float | None = None
    user_rate: float | None = None
    churn_rate: float | None = None
    churn_lifetime: float | None = None
    storm_at: float | None = None
    duration: float | None = None

    def over(self, defaults: Workload) -> Workload:
        """These values where given, ``defaults``' elsewhere."""
        given = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return dataclasses.replace(defaults, **given)


DEFAULTS: Final[dict[str, Workload]] = {
    "broadcast": Workload(users=1000, rate=10.0, duration=20.0),
    "signing-day": Workload(
        users=10_000, documents=2_000, participants=5, doc_rate=200.0, user_rate=100.0,
        duration=30.0,
    ),
    "churn": Workload(
        users=1_000, documents=200, participants=5, doc_rate=100.0, user_rate=20.0,
        churn_rate=50.0, churn_lifetime=5.0, duration=30.0,
    ),
    "reconnect-storm": Workload(
        users=2_000, documents=400, participants=5, doc_rate=100.0, user_rate=50.0,
        duration=30.0,
    ),
}  # fmt: skip


@dataclass
class Plan:
    """What one run does."""

    scenario: str
    prefix: str
    users: list[UserSpec]
    """Each user's id and the document channels in its token's ``channels`` claim."""
    streams: tuple[Stream, ...]
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
            parts.append(f"{s.kind} {s.rate:g}/s over {n(len(s.channels), 'channel')}")
        if self.churn_rate:
            parts.append(f"churn {self.churn_rate:g}/s x {self.churn_lifetime:g}s")
        if self.storm_at is not None:
            parts.append(f"storm at {self.storm_at:g}s")
        return ", ".join(parts)


def _layout(
    prefix: str, users: int, documents: int, participants: int
) -> tuple[list[UserSpec], list[str]]:
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
    return [UserSpec(names[i], tuple(member[i])) for i in range(users)], docs


def build_plan(scenario: str, prefix: str, given: Workload) -> Plan:
    """The plan for ``scenario`` with the ``given`` values over its :data:`DEFAULTS`."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}")
    w = given.over(DEFAULTS[scenario])
    users = w.users or 0
    if scenario == "broadcast":
        channel = f"document:{prefix}all"
        return Plan(
            scenario,
            prefix,
            [UserSpec(f"{prefix}u{n}", (channel,)) for n in range(users)],
            (Stream((channel,), w.rate or 0.0, "broadcast"),),
            documents=[channel],
            # N connections joining one channel would push N^2/2 join messages.
            spawn_namespaces={"document": {"join_leave": False}},
        )
    layout, docs = _layout(prefix, users, w.documents or 0, w.participants or 1)
    user_channels = tuple(f"user:{spec.name}" for spec in layout)
    streams = (
        Stream(tuple(docs), w.doc_rate or 0.0, "status"),
        Stream(user_channels, w.user_rate or 0.0, "notification"),
    )
    plan = Plan(scenario, prefix, layout, streams, documents=docs)
    if scenario == "churn":
        plan.churn_rate = w.churn_rate or 0.0
        plan.churn_lifetime = w.churn_lifetime or 0.0
    elif scenario == "reconnect-storm":
        at = w.storm_at
        plan.storm_at = at if at is not None else (w.duration or 0.0) / 3.0
    return plan
