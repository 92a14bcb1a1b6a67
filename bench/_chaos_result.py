"""The figures of one chaos run, the invariants they must satisfy, and the report printed from them.

Kept apart from the judging code so that a reader (or a test) can see in one place every
figure the run produces and every condition under which it fails.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ChaosResult:
    """Every figure of one run; ``ok`` says whether every invariant held."""

    claims: int = 0
    stores: int = 0
    events_planned: int = 0
    events_accepted: int = 0
    events_duplicate: int = 0
    events_failed: int = 0  # never accepted before the deadline: a loss at the door
    send_retries: int = 0  # 503s and connection errors the sender retried
    tickets: int = 0
    duplicates: int = 0  # claims with more than one ticket
    missing: int = 0  # claims with no ticket
    stray_tickets: int = 0  # tickets for no claim of the run, or in another store's account
    snoozes_expected: int = 0
    snoozes_done: int = 0
    snooze_before_ticket: int = 0
    unexpected_snoozes: int = 0  # tickets snoozed whose claim never reached a finished state
    unexpected_writes: int = 0  # requests other than create, snooze, lookups and team checks
    records_out_of_step: int = 0  # opcore's claim record disagrees with Richpanel once all is quiet
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    unexplained_dead_letters: int = 0
    dramatiq_dead: int = 0  # messages in Dramatiq's own dead-letter queues (no reason kept)
    parked: int = 0
    left_in_queues: int = 0
    worker_kills: int = 0
    worker_starts: int = 0
    redis_restarts: int = 0
    redis_down_seconds: float = 0.0
    injected: dict[str, int] = field(default_factory=dict)  # 429, 492, 500, dropped
    richpanel_requests: dict[str, int] = field(default_factory=dict)
    widget: dict[str, int] = field(default_factory=dict)
    widget_claims_missing: int = 0  # claims absent from their customer's panel at the end
    widget_state_wrong: int = 0  # claims whose panel state is not the last one sent
    secret_leaks: list[str] = field(default_factory=list)
    secrets_checked: dict[str, int] = field(default_factory=dict)
    delivery_stats: dict[str, int] = field(default_factory=dict)
    ingress_seconds: dict[str, float] = field(default_factory=dict)  # first try to 202/200, retries included
    ticket_seconds: dict[str, float] = field(default_factory=dict)  # claim.created accepted -> ticket in Richpanel
    # Zendesk stores, judged from the Zendesk sandbox
    zd_tickets: int = 0
    zd_duplicates: int = 0
    zd_missing: int = 0
    zd_stray: int = 0
    zd_pending_expected: int = 0
    zd_pending_done: int = 0
    zd_unexpected_pending: int = 0  # tickets pending whose claim never reached a finished state
    zd_public_comments: int = 0  # a public comment would have emailed the customer
    zd_unexpected_writes: int = 0
    zd_injected: dict[str, int] = field(default_factory=dict)  # 500, dropped, and 429 (the budget's)
    zendesk_requests: dict[str, int] = field(default_factory=dict)
    zendesk_stats: dict[str, int] = field(default_factory=dict)
    zd_ticket_seconds: dict[str, float] = field(default_factory=dict)
    # the note mirror (on for half the stores), judged from both stand-ins
    notes_expected: int = 0  # messages of claims whose store mirrors them
    notes_written: int = 0
    notes_missing: int = 0
    notes_duplicated: int = 0
    notes_unexpected: int = 0  # notes for no message, or on a store with the mirror off
    notes_public: int = 0  # public comments written after a ticket's creation
    notes_out_of_order: int = 0  # pairs of messages that reached opcore within 1.5 s, noted out of order
    notes_unescaped: int = 0  # Richpanel notes showing a message's markup unescaped
    writes_before_ticket: int = 0  # writes to a ticket the helpdesk did not hold
    # /metrics as the one web process answered it, against what the stand-ins hold
    metrics_tickets: dict[str, int] = field(default_factory=dict)  # plugin -> create done + adopted
    metrics_out_of_step: int = 0  # helpdesks whose /metrics ticket count differs from the stand-in's
    settled: bool = False  # no message left in any queue (nothing more could happen)
    settle_seconds: float = 0.0
    wall_seconds: float = 0.0
    seed: int = 0
    machine: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        """Each broken invariant with its count; empty when the run passed."""
        checks = {
            "events never accepted": self.events_failed,
            "claims without a ticket": self.missing,
            "claims with duplicate tickets": self.duplicates,
            "stray tickets": self.stray_tickets,
            "finished claims not snoozed": self.snoozes_expected - self.snoozes_done,
            "snoozes before their ticket": self.snooze_before_ticket,
            "unexpected snoozes": self.unexpected_snoozes,
            "unexpected writes to Richpanel": self.unexpected_writes,
            "opcore records out of step with Richpanel (work dropped)": self.records_out_of_step,
            "unexplained dead letters": self.unexplained_dead_letters,
            "messages in Dramatiq's dead-letter queues": self.dramatiq_dead,
            "parked messages": self.parked,
            "messages left in queues": self.left_in_queues,
            "secret leaks": len(self.secret_leaks),
            "widget answers 5xx": self.widget.get("5xx", 0),
            "widget attacks not refused": self.widget.get("attack_accepted", 0),
            "claims missing from the widget": self.widget_claims_missing,
            "claims with a wrong state in the widget": self.widget_state_wrong,
            "Zendesk claims without a ticket": self.zd_missing,
            "Zendesk claims with duplicate tickets": self.zd_duplicates,
            "stray Zendesk tickets": self.zd_stray,
            "finished Zendesk claims not pending": self.zd_pending_expected - self.zd_pending_done,
            "unexpected pending Zendesk tickets": self.zd_unexpected_pending,
            "public comments in Zendesk": self.zd_public_comments,
            "unexpected writes to Zendesk": self.zd_unexpected_writes,
            "helpdesks whose /metrics ticket count is not the stand-in's": self.metrics_out_of_step,
            "messages without their note": self.notes_missing,
            "messages noted more than once": self.notes_duplicated,
            "notes for no message or on a store with the mirror off": self.notes_unexpected,
            "public comments after a ticket's creation": self.notes_public,
            "notes out of created_at order": self.notes_out_of_order,
            "notes with unescaped markup": self.notes_unescaped,
            "writes to tickets not yet created": self.writes_before_ticket,
        }
        found = [f"{name}: {count}" for name, count in checks.items() if count]
        if not self.settled:
            found.insert(0, "messages were still queued at the deadline")
        return found

    @property
    def ok(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        """Every figure plus the verdict, for ``--json``."""
        return {**asdict(self), "ok": self.ok, "failures": self.failures}

    def report(self) -> str:
        """The figures as the text the CLI prints and the CI log keeps, ending with the verdict."""
        lines = (self._delivery_lines() + self._zendesk_lines() + self._note_lines() + self._fault_lines()
                 + self._timing_lines())
        lines += [f"note: {n}" for n in self.notes]
        lines.append("RESULT: " + ("PASS" if self.ok else "FAIL: " + "; ".join(self.failures)))
        return "\n".join(lines)

    def _delivery_lines(self) -> list[str]:
        lines = [
            f"machine: {self.machine}",
            f"seed: {self.seed}   wall time: {self.wall_seconds:.1f} s (settled {self.settle_seconds:.1f} s after the faults stopped)",
            f"claims: {self.claims} in {self.stores} stores   events: {self.events_planned} sent, "
            f"{self.events_accepted} accepted (202), {self.events_duplicate} answered duplicate, "
            f"{self.events_failed} never accepted, {self.send_retries} retries after 503/connection errors",
            f"tickets: {self.tickets}   duplicates: {self.duplicates}   missing: {self.missing}   stray: {self.stray_tickets}",
            f"snoozes: expected {self.snoozes_expected}, done {self.snoozes_done}   before their ticket: "
            f"{self.snooze_before_ticket}   unexpected: {self.unexpected_snoozes}",
            f"dead letters: {len(self.dead_letters)} (unexplained {self.unexplained_dead_letters})   "
            f"Dramatiq DLQ: {self.dramatiq_dead}   parked: {self.parked}   left in queues: {self.left_in_queues}",
        ]
        return lines + [f"  dead letter {d['id']}: {d['reason']}" for d in self.dead_letters]

    def _note_lines(self) -> list[str]:
        if not (self.notes_expected or self.notes_written):
            return []
        return [f"notes (mirror on for half the stores): expected {self.notes_expected}, written {self.notes_written}   "
                f"missing {self.notes_missing}   duplicated {self.notes_duplicated}   unexpected {self.notes_unexpected}"
                f"   public {self.notes_public}   out of order {self.notes_out_of_order}   unescaped "
                f"{self.notes_unescaped}   writes before the ticket {self.writes_before_ticket}"]

    def _zendesk_lines(self) -> list[str]:
        if not (self.zd_tickets or self.zd_missing):
            return []
        inj = self.zd_injected
        return [
            f"zendesk tickets: {self.zd_tickets}   duplicates: {self.zd_duplicates}   missing: {self.zd_missing}   "
            f"stray: {self.zd_stray}   public comments: {self.zd_public_comments}",
            f"zendesk pending: expected {self.zd_pending_expected}, done {self.zd_pending_done}   unexpected: "
            f"{self.zd_unexpected_pending}   unexpected writes: {self.zd_unexpected_writes}",
            f"zendesk answers: 500 {inj.get('500', 0)}, dropped {inj.get('dropped', 0)}, 429 (budget) "
            f"{inj.get('429', 0)}; requests: " + ", ".join(f"{k} {v}" for k, v in sorted(self.zendesk_requests.items())),
        ]

    def _fault_lines(self) -> list[str]:
        inj = self.injected
        req = self.richpanel_requests
        w = self.widget
        outages = ", ".join(f"{k[7:]}: {v}" for k, v in w.items() if k.startswith("outage_") and k != "outage_other")
        lines = [
            f"worker kills: {self.worker_kills} (worker starts {self.worker_starts})   redis restarts: "
            f"{self.redis_restarts} (down {self.redis_down_seconds:.1f} s)",
            f"injected by the sandbox: 429 {inj.get('429', 0)}, 492 {inj.get('492', 0)}, 500 {inj.get('500', 0)}, "
            f"dropped {inj.get('dropped', 0)}",
            "requests to Richpanel: " + ", ".join(f"{k} {v}" for k, v in sorted(req.items())),
            f"unexpected writes: {self.unexpected_writes}   opcore records out of step with Richpanel: "
            f"{self.records_out_of_step}",
            f"widget: {w.get('ok', 0)} panels served ({w.get('iframe_requests', 0)} asked by iframe URL, the rest "
            f"signed), {w.get('refused', 0)} attacks refused, "
            f"{w.get('attack_accepted', 0)} attacks accepted; while Redis was down {w.get('unavailable', 0)} answered "
            f"503 JSON and {w.get('outage_other', 0)} something else ({outages or 'none'}); "
            f"{w.get('5xx', 0)} other 5xx   claims missing from panels: {self.widget_claims_missing}, "
            f"wrong state: {self.widget_state_wrong}",
            "/metrics (one web process, workers elsewhere): tickets " + ", ".join(
                f"{k} {v}" for k, v in sorted(self.metrics_tickets.items())) + f"   out of step: {self.metrics_out_of_step}",
            "secrets checked: " + ", ".join(f"{k} {v}" for k, v in self.secrets_checked.items())
            + f"   leaks: {len(self.secret_leaks)}",
        ]
        return lines + [f"  LEAK: {leak}" for leak in self.secret_leaks]

    def _timing_lines(self) -> list[str]:
        lines = []
        if self.ingress_seconds:
            lines.append("event accepted after (first try to 202, retries included): " + _pcts(self.ingress_seconds))
        if self.ticket_seconds:
            lines.append("claim accepted to ticket in Richpanel: " + _pcts(self.ticket_seconds))
        if self.zd_ticket_seconds:
            lines.append("claim accepted to ticket in Zendesk: " + _pcts(self.zd_ticket_seconds))
        if self.delivery_stats:
            lines.append("delivery stats: " + ", ".join(f"{k} {v}" for k, v in sorted(self.delivery_stats.items())))
        if self.zendesk_stats:
            lines.append("zendesk delivery stats: " + ", ".join(f"{k} {v}" for k, v in sorted(self.zendesk_stats.items())))
        return lines


def _pcts(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f} s" for k, v in values.items())


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50, p99 and max by the nearest-rank method (no interpolation: every figure was observed)."""
    if not samples:
        return {}
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(math.ceil(q * len(ordered))) - 1)]

    return {"p50": pick(0.50), "p99": pick(0.99), "max": ordered[-1]}
