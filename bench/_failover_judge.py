"""Judging a failover run, from the stand-ins: what was acknowledged, and whether it reached a helpdesk.

A failover loses what the old primary had acknowledged and the new one never received. opcore
answers Order Protection 202 once an event is in Redis, so the question a failover asks is: of
every event opcore acknowledged (202, or 200 ``duplicate``, which says "I already have it"),
did its effect reach the helpdesk exactly once? That is judged from the Richpanel and Zendesk
stand-ins (their tickets), never from opcore's Redis, which is the very thing that may have
forgotten. ``AckLog`` records every answer the sender met (wrapped around the chaos Sender's
answer hook, so the Sender itself is reused unchanged); ``judge_acknowledged`` compares.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections import Counter as Tally
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx
import redis

from bench._chaos_judge import _tickets_by_claim
from bench._chaos_plan import Claim
from bench._chaos_result import ChaosResult

Checked = Callable[[httpx.Response, str], httpx.Response]


class AckLog:
    """Every answer the sender met: when each event was first acknowledged, and every non-2xx."""

    def __init__(self, inner: Checked) -> None:
        self.inner = inner  # the chaos run's secret scan of every answer, kept
        self.lock = threading.Lock()
        self.acked: dict[str, tuple[float, int]] = {}  # event id -> (first ack time, 202 or 200)
        self.accepted: list[float] = []  # every 202, as wall times
        self.errors: list[tuple[float, int]] = []  # every non-2xx answer: (time, status)

    def checked(self, answer: httpx.Response, where: str) -> httpx.Response:
        now = time.time()
        status = answer.status_code
        with self.lock:
            if status in (200, 202):
                event_id = json.loads(answer.request.content)["id"]
                self.acked.setdefault(event_id, (now, status))
                if status == 202:
                    self.accepted.append(now)
            else:
                self.errors.append((now, status))
        return self.inner(answer, where)

    def statuses(self) -> dict[str, int]:
        return {str(k): v for k, v in sorted(Tally(s for _, s in self.errors).items())}

    def first_202_after(self, at: float, grace: float = 0.2) -> float | None:
        """Seconds from ``at`` to the first 202 answered more than ``grace`` s after it (the
        answers of requests already committed when the primary died arrive within that)."""
        later = [t for t in self.accepted if t > at + grace]
        return min(later) - at if later else None

    def last_error_after(self, at: float) -> float | None:
        later = [t for t, _ in self.errors if t > at]
        return max(later) - at if later else None

    def accepted_between(self, start: float, end: float) -> int:
        return sum(1 for t in self.accepted if start < t < end)


@dataclass
class Judged:
    """Acknowledged work against the stand-ins' tickets (claim ids kept for the JSON)."""

    claims_acked: int = 0
    lost: list[str] = field(default_factory=list)  # creation acknowledged, no ticket anywhere
    duplicated: list[str] = field(default_factory=list)  # two or more tickets
    finishes_acked: int = 0
    lost_finishes: list[str] = field(default_factory=list)  # finish acknowledged, ticket exists, not finished
    #: Seconds from the kill to the acknowledgement of each lost item (negative: acked before it).
    lost_acked_at: list[float] = field(default_factory=list)
    lost_finish_acked_at: list[float] = field(default_factory=list)
    duplicated_acked_at: list[float] = field(default_factory=list)
    by_helpdesk: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicated or self.lost_finishes)


def judge_acknowledged(claims: list[Claim], helpdesk_of: dict[str, str], api_keys: dict[str, str],
                       subdomain_of: dict[str, str], rp: httpx.Client, zd: httpx.Client, acks: AckLog,
                       kill_at: float | None) -> Judged:
    """Lost claims, duplicated claims and lost finishes, from the stand-ins' tickets.

    A lost finish is counted only for a claim that has a ticket (a claim without one is already
    lost); its ticket must be snoozed (Richpanel, ``snoozed_till: "0"``) or pending (Zendesk).
    """
    rp_claims = [c for c in claims if helpdesk_of[c.store_id] == "richpanel"]
    rp_by, _, _ = _tickets_by_claim(rp.get("/_sandbox/tickets").json()["accounts"], rp_claims, api_keys)
    tickets: dict[str, list[bool]] = {c: [t.get("snoozed_till") == "0" for _, t in found] for c, found in rp_by.items()}
    store_of = {sub: store for store, sub in subdomain_of.items()}
    by_id = {c.claim_id: c for c in claims}
    for account in zd.get("/_sandbox/tickets").json()["accounts"]:
        for t in account["tickets"]:
            claim = by_id.get(t.get("external_id") or "")
            if claim is not None and claim.store_id == store_of.get(account["subdomain"]):
                tickets.setdefault(claim.claim_id, []).append(t["status"] == "pending")
    out = Judged(by_helpdesk={h: {"lost": 0, "duplicated": 0, "lost_finishes": 0} for h in ("richpanel", "zendesk")})
    since = (lambda t: t - kill_at) if kill_at else (lambda t: t)
    for c in claims:
        found = tickets.get(c.claim_id, [])
        tally = out.by_helpdesk[helpdesk_of[c.store_id]]
        created = acks.acked.get(c.created["id"])
        if created:
            out.claims_acked += 1
            if not found:
                out.lost.append(c.claim_id)
                out.lost_acked_at.append(since(created[0]))
                tally["lost"] += 1
        if len(found) > 1:
            out.duplicated.append(c.claim_id)
            out.duplicated_acked_at.append(since(created[0]) if created else float("nan"))
            tally["duplicated"] += 1
        finish = acks.acked.get(c.changes[0][1]["id"]) if c.finished and c.changes else None
        if finish:
            out.finishes_acked += 1
            if found and not any(found):
                out.lost_finishes.append(c.claim_id)
                out.lost_finish_acked_at.append(since(finish[0]))
                tally["lost_finishes"] += 1
    return out


_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")
_NOISE = re.compile(r"'[^']*'|\d+")


def where_stuck(r: redis.Redis, namespace: str, queues: tuple[str, ...], heartbeat_ms: int) -> dict[str, int]:
    """Where each message still in a queue's message hash (of ``queues`` and any other found) is: queued, held (acked out) by a worker
    that still beats or by one that does not, or referenced nowhere, which Dramatiq never hands out
    again. Read when a run does not settle, to say why."""
    ns = f"{namespace}:dramatiq"
    now_ms = int(r.time()[0]) * 1000
    beats = {k.decode(): int(v) for k, v in r.zrange(f"{ns}:__heartbeats__", 0, -1, withscores=True)}
    out = {"queued": 0, "held by a live worker": 0, "held by a dead worker": 0, "orphaned (nowhere)": 0}
    found = {k.decode()[len(ns) + 1:-len(".msgs")] for k in r.scan_iter(f"{ns}:*.msgs")}
    for q in sorted(set(queues) | {q for q in found if not q.endswith(".XQ")}):
        ids = {k.decode() for k in r.hkeys(f"{ns}:{q}.msgs")}
        if not ids:
            continue
        queued = {m.decode() for m in r.lrange(f"{ns}:{q}", 0, -1)}
        held: dict[str, str] = {}
        for key in r.scan_iter(f"{ns}:__acks__.*.{q}"):
            worker = key.decode()[len(f"{ns}:__acks__."):-len(q) - 1]
            held.update({m.decode(): worker for m in r.smembers(key)})
        for m in ids:
            if m in queued:
                out["queued"] += 1
            elif m in held:
                alive = now_ms - beats.get(held[m], 0) < heartbeat_ms
                out["held by a live worker" if alive else "held by a dead worker"] += 1
            else:
                out["orphaned (nowhere)"] += 1
        out[f"in {q}"] = len(ids)
    return out


def _stamp(line: str) -> float | None:
    """The epoch time of a log line of opcore's (local time, ``2026-12-07 15:55:22,155``)."""
    found = _STAMP.match(line)
    if not found:
        return None
    return time.mktime(time.strptime(found.group(0)[:19], "%Y-%m-%d %H:%M:%S")) + int(found.group(0)[20:23]) / 1000


def scan_logs(tmp: Path, names: list[str], late_after: float | None = None) -> dict[str, Any]:
    """Tracebacks and ERROR/CRITICAL lines in opcore's logs, with the most frequent ones (quoted
    ids and digits blanked so repeats group): the product's own account of what went wrong.

    ``late`` counts the ERROR lines written after ``late_after`` (5 s after the promotion): by
    then the new primary has long answered, so an error there is not the outage itself but
    something opcore kept from it (a connection to the dead primary, say)."""
    out: dict[str, Any] = {}
    for name in names:
        path = tmp / f"{name}.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        errors = [ln for ln in lines if " ERROR " in ln or " CRITICAL " in ln]
        late = [ln for ln in errors if late_after is not None and (_stamp(ln) or 0) > late_after]
        kinds = Tally(ln.strip() for ln in lines if re.match(r"^\w+(\.\w+)*(Error|Exception):", ln.strip()))
        common = Tally(_NOISE.sub("#", _STAMP.sub("", ln))[:160] for ln in errors).most_common(3)
        out[name] = {"tracebacks": sum("Traceback (most recent call last)" in ln for ln in lines),
                     "error_lines": len(errors), "exceptions": dict(kinds.most_common(4)),
                     "most_frequent": [f"{n} × {text}" for text, n in common],
                     "late": len(late), "late_examples": [ln[:200] for ln in late[:3]]}
    return out


@dataclass
class FailoverResult:
    """One run: its settings, its timeline, the lag, the sender's view, the verdict."""

    variant: str
    run: int
    replicas: int
    claims: int
    rate: float
    seed: int
    commit: str = ""
    machine: str = ""
    started: str = ""
    error: str = ""  # the run could not be judged (set up failed, product not ready)
    topology: dict[str, Any] = field(default_factory=dict)
    timeline: dict[str, float | None] = field(default_factory=dict)  # seconds from the kill
    lag: dict[str, Any] = field(default_factory=dict)
    sender: dict[str, Any] = field(default_factory=dict)
    judged: Judged = field(default_factory=Judged)
    logs: dict[str, Any] = field(default_factory=dict)
    stuck: dict[str, int] = field(default_factory=dict)  # where the unsettled messages are (see where_stuck)
    chaos: ChaosResult = field(default_factory=ChaosResult)  # the chaos judge's other figures
    kept: str = ""

    @property
    def clean(self) -> bool:
        return not self.error and self.judged.clean

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["chaos"] = self.chaos.as_dict()
        out["clean"] = self.clean
        return out

    def report(self) -> str:
        """One screen: the run, the timeline, the lag, the sender, the verdict from the stand-ins."""
        head = (f"== failover run {self.run}: variant {self.variant}, OPCORE_REDIS_REPLICAS={self.replicas}, seed "
                f"{self.seed}, {self.claims} claims at {self.rate:g}/s, commit {self.commit}, {self.started} ==")
        if self.error:
            return head + f"\nRUN FAILED, not judged: {self.error}" + (f"\nfiles kept in {self.kept}" if self.kept else "")
        tl, lag, s, j, c = self.timeline, self.lag, self.sender, self.judged, self.chaos
        lines = [head, "topology: " + ", ".join(f"{k} {v}" for k, v in self.topology.items())]
        if tl:
            lines.append("timeline, s from the kill: " + ", ".join(f"{k} {_s(v)}" for k, v in tl.items()))
        if lag:
            lines.append("replication: " + ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}"
                                                     for k, v in lag.items()))
        lines += [
            f"sender: {c.events_planned} deliveries, {c.events_accepted} answered 202, {c.events_duplicate} duplicate, "
            f"{c.events_failed} never accepted; non-2xx answers {s.get('statuses') or 'none'}, connection errors "
            f"{s.get('connection_errors', 0)}; 202s while no primary answered {s.get('accepted_without_primary', 0)}",
            f"from the stand-ins: {j.claims_acked} claims acknowledged: LOST {len(j.lost)}, DUPLICATED "
            f"{len(j.duplicated)}; {j.finishes_acked} finishes acknowledged: LOST FINISHES {len(j.lost_finishes)}   "
            + "; ".join(f"{h}: " + ", ".join(f"{k} {v}" for k, v in t.items()) for h, t in j.by_helpdesk.items()),
        ]
        for label, ids, when in (("lost", j.lost, j.lost_acked_at), ("duplicated", j.duplicated, j.duplicated_acked_at),
                                 ("lost finish", j.lost_finishes, j.lost_finish_acked_at)):
            if ids:
                lines.append(f"  {label}: acknowledged {_span(when)} s from the kill; e.g. {', '.join(ids[:3])}")
        lines.append(f"tickets: Richpanel {c.tickets}, Zendesk {c.zd_tickets}; snoozed {c.snoozes_done}/"
                     f"{c.snoozes_expected}, pending {c.zd_pending_done}/{c.zd_pending_expected}; settled "
                     + (f"{c.settle_seconds:.1f} s after the last delivery" if c.settled else
                        f"NO ({c.left_in_queues} messages still queued after {c.settle_seconds:.0f} s: "
                        + ", ".join(f"{k} {v}" for k, v in self.stuck.items() if v) + ")"))
        others = [f for f in c.failures if not f.startswith(("claims without", "claims with duplicate",
                                                              "Zendesk claims without", "Zendesk claims with dup"))]
        lines.append("other chaos checks: " + ("all held" if not others else "; ".join(others)))
        for name, found in self.logs.items():
            lines.append(f"log {name}: {found['tracebacks']} tracebacks, {found['error_lines']} ERROR lines"
                         + (f" ({found['late']} later than 5 s after the promotion)" if found.get("late") else "")
                         + (f"; {found['exceptions']}" if found["exceptions"] else ""))
            lines += [f"    {m}" for m in found["most_frequent"][:2]]
            lines += [f"    late: {m}" for m in found.get("late_examples", [])[:2]]
        notes = [n for n in c.notes if not n.startswith(("broker maintenance", "Traceback", "logs and AOF"))]
        if notes:
            lines.append(f"chaos notes: {len(notes)}, e.g. " + " | ".join(n.splitlines()[0][:110] for n in notes[:3]))
        if self.kept:
            lines.append(f"files kept in {self.kept}")
        lines.append("VERDICT: " + ("nothing lost, nothing duplicated, every finish done" if self.clean else
                                    f"LOST {len(j.lost)}, DUPLICATED {len(j.duplicated)}, "
                                    f"LOST FINISHES {len(j.lost_finishes)}"))
        return "\n".join(lines)


def _s(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f}"


def _span(values: list[float]) -> str:
    real = [v for v in values if v == v]
    return f"{min(real):+.2f} to {max(real):+.2f}" if real else "?"


def summary(results: list[FailoverResult]) -> str:
    """One line per run, as the table in docs/RELIABILITY.md has it."""
    rows = ["variant   replicas seed        lost  dup  lost-fin  503s  conn-err  first-202  lag-max(bytes)  settled"]
    for r in results:
        if r.error:
            rows.append(f"{r.variant:<9} {r.replicas:<8} {r.seed:<11} RUN FAILED: {r.error[:80]}")
            continue
        j, s = r.judged, r.sender
        rows.append(f"{r.variant:<9} {r.replicas:<8} {r.seed:<11} {len(j.lost):<5} {len(j.duplicated):<4} "
                    f"{len(j.lost_finishes):<9} {s.get('statuses', {}).get('503', 0):<5} "
                    f"{s.get('connection_errors', 0):<9} {_s(r.timeline.get('first 202')):<10} "
                    f"{r.lag.get('max lag', 0):<15,} {'yes' if r.chaos.settled else 'NO'}")
    return "\n".join(rows)


def lag(samples: list[dict[str, int]]) -> dict[str, int]:
    """The largest gap between the primary's offset and the replica's, seen in the samples."""
    gaps = [s["primary"] - s["replica"] for s in samples if s["primary"] >= 0 and s["replica"] >= 0]
    last = samples[-1]
    return {"max lag": max([0, *gaps]), "primary offset": last["primary"], "acked by replica": last["acked"],
            "samples": len(samples)}


def code_under_test(root: Path) -> str:
    """HEAD's short hash, ``+dirty`` when the work tree has changes (another engineer's, say)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True).stdout.strip()
    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return "unknown (not a git checkout: name it with --code)"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
