"""Judging a chaos run once it has settled: from what the helpdesks received, not from opcore's bookkeeping.

opcore's own records could agree with themselves and still be wrong, so the verdict comes from
the sandbox (its tickets and its request log), from what a customer's widget panel shows, and
from Redis only for what must be *absent* there (dead letters without a reason, parked or
queued work, secrets). Secret hygiene is judged here too: every byte the run can reach is
scanned for the stores' keys, the widget signing secrets and opcore's own secrets.
"""

from __future__ import annotations

import re
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlencode

import httpx
import redis

from bench._chaos_plan import Claim
from bench._chaos_procs import NAMESPACE, QUEUES
from bench._chaos_result import ChaosResult, percentiles
from bench._chaos_traffic import iframe_target
from opcore_hooks.signing import sign

_LINK = re.compile(r"/claims/view/([A-Za-z0-9_.\-]+)")
_SNOOZE_PREFIX, _SNOOZE_SUFFIX = "/v1/tickets/", "/snooze"
_SNOOZE = "PUT /v1/tickets/{id}/snooze"
#: What opcore may send to Richpanel; any other request that is not a GET is an unexpected write.
_EXPECTED = {"POST /v1/tickets", _SNOOZE, "GET /v1/tickets/email/{email}", "GET /v1/teams"}
_NOTE = "PUT /v1/tickets/{id}"  # expected only as a private operator comment (the note mirror)

Tickets = dict[str, list[tuple[str, dict[str, Any]]]]  # claim id -> [(store, ticket)]


# -- opcore's state, polled while the run settles ---------------------------------------------

def claim_records(r: redis.Redis, claims: list[Claim], helpdesk_of: dict[str, str]) -> list[list[bytes | None]]:
    """opcore's (ticket_id, finish) record of each claim in its store's helpdesk, in the order of ``claims``."""
    pipe = r.pipeline(transaction=False)
    for c in claims:
        pipe.hmget(f"{NAMESPACE}:{helpdesk_of[c.store_id]}:claim:{c.store_id}:{c.claim_id}", "ticket_id", "finish")
    return pipe.execute()


def work_looks_done(r: redis.Redis, claims: list[Claim], helpdesk_of: dict[str, str]) -> bool:
    """opcore's own view (cheap to poll): every claim has a ticket id, every finish is done.

    Only used to stop the faults early; the verdict never trusts it.
    """
    try:
        rows = claim_records(r, claims, helpdesk_of)
    except redis.RedisError:
        return False
    return all(t is not None and (not c.finished or s == b"done") for c, (t, s) in zip(claims, rows, strict=True))


def queued_messages(r: redis.Redis) -> int:
    """Messages in every queue's message hash (queued, delayed or held by a dead worker); -1 if Redis is away.

    Zero means nothing more can happen: the run has settled.
    """
    try:
        pipe = r.pipeline(transaction=False)
        for q in QUEUES:
            pipe.hlen(f"{NAMESPACE}:dramatiq:{q}.msgs")
        return sum(pipe.execute())
    except redis.RedisError:
        return -1


# -- the sandbox: tickets, snoozes, requests --------------------------------------------------

def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _mask(key: str) -> str:
    from plugins.richpanel.client import mask_key

    return mask_key(key)


def verify_sandbox(control: httpx.Client, claims: list[Claim], api_keys: dict[str, str], result: ChaosResult,
                   *, dry: bool, accepted_at: dict[str, float] | None = None) -> bool:
    """Judge from the sandbox's tickets and request log; ``dry`` only says whether all is well yet."""
    accounts = control.get("/_sandbox/tickets").json()["accounts"]
    by_claim, stray, tickets_total = _tickets_by_claim(accounts, claims, api_keys)
    missing = sum(1 for c in claims if c.claim_id not in by_claim)
    duplicates = sum(1 for v in by_claim.values() if len(v) > 1)
    snoozed, unexpected = _snoozes(claims, by_claim)
    if dry:
        return not missing and not duplicates and not stray and snoozed == result.snoozes_expected and not unexpected
    result.tickets, result.missing, result.duplicates, result.stray_tickets = tickets_total, missing, duplicates, stray
    result.snoozes_done, result.unexpected_snoozes = snoozed, unexpected

    created_at = {ticket["id"]: _epoch(ticket["created_at"]) for account in accounts for ticket in account["tickets"]}
    if accepted_at:
        result.ticket_seconds = percentiles([
            min(_epoch(t["created_at"]) for _, t in found) - accepted_at[claim_id]
            for claim_id, found in by_claim.items() if claim_id in accepted_at])
    _judge_requests(control.get("/_sandbox/requests").json()["requests"], created_at, result)
    return result.ok


def _tickets_by_claim(accounts: list[dict[str, Any]], claims: list[Claim],
                      api_keys: dict[str, str]) -> tuple[Tickets, int, int]:
    """Each claim's tickets (found by the claim link in the comments), the stray count and the total.

    A ticket is stray when it links to no claim of the run or sits in another store's account.
    """
    by_claim: Tickets = {}
    stray = tickets_total = 0
    claim_ids = {c.claim_id: c for c in claims}
    masked_store = {_mask(k): s for s, k in api_keys.items()}
    for account in accounts:
        store = masked_store.get(account["account"])
        for ticket in account["tickets"]:
            tickets_total += 1
            text = " ".join(str(c.get("body") or "") for c in ticket.get("comments") or [])
            found = _LINK.search(text)
            claim = claim_ids.get(found.group(1)) if found else None
            if claim is None or claim.store_id != store:
                stray += 1
                continue
            by_claim.setdefault(claim.claim_id, []).append((store, ticket))
    return by_claim, stray, tickets_total


def _snoozes(claims: list[Claim], by_claim: Tickets) -> tuple[int, int]:
    """(finished claims whose ticket is snoozed, other claims whose ticket is snoozed)."""
    snoozed = unexpected = 0
    for c in claims:
        is_snoozed = any(t.get("snoozed_till") == "0" for _, t in by_claim.get(c.claim_id, []))
        if c.finished and is_snoozed:
            snoozed += 1
        elif is_snoozed:
            unexpected += 1
    return snoozed, unexpected


def _judge_requests(requests: list[dict[str, Any]], created_at: dict[str, float], result: ChaosResult) -> None:
    """From the request log: the faults injected, what was written, and no snooze before its ticket."""
    injected = {"429": 0, "492": 0, "500": 0, "dropped": 0}
    kinds: dict[str, int] = {}
    unexpected_writes = before = 0
    for req in requests:
        method, path, status = req["method"], req["path"], req["status"]
        if path.startswith("/_sandbox"):
            continue
        if req["dropped"]:
            injected["dropped"] += 1
        elif str(status) in injected:
            injected[str(status)] += 1
        kind = _request_kind(method, path)
        if kind == _SNOOZE:
            ticket_id = path[len(_SNOOZE_PREFIX):-len(_SNOOZE_SUFFIX)]
            if ticket_id not in created_at or req["time"] < created_at[ticket_id]:
                before += 1
        elif kind == _NOTE:
            unexpected_writes += _acted(req) and not _private_note(req.get("body"), operator=True)
        elif kind not in _EXPECTED and method != "GET":
            unexpected_writes += 1
        kinds[kind] = kinds.get(kind, 0) + 1
    result.injected, result.richpanel_requests = injected, kinds
    result.unexpected_writes, result.snooze_before_ticket = unexpected_writes, before


def _request_kind(method: str, path: str) -> str:
    """The request's route, or ``METHOD path`` for anything opcore has no business sending."""
    if method == "POST" and path == "/v1/tickets":
        return "POST /v1/tickets"
    if method == "PUT" and path.startswith(_SNOOZE_PREFIX) and path.endswith(_SNOOZE_SUFFIX):
        return _SNOOZE
    if method == "GET" and path.startswith("/v1/tickets/email/"):
        return "GET /v1/tickets/email/{email}"
    if method == "GET" and path == "/v1/teams":
        return "GET /v1/teams"
    if path.startswith("/v1/tickets/") and path.count("/") == 3 and method in ("PUT", "GET"):
        return _NOTE if method == "PUT" else "GET /v1/tickets/{id}"
    return f"{method} {path}"


def _acted(req: dict[str, Any]) -> bool:
    """Whether the Richpanel stand-in acted on a request: answered 200, or dropped the answer
    after acting. A dropped answer to an injected 500 failed before the body was read (found by
    an N=5,000 run: the stand-in records its body as None), so it wrote nothing."""
    return req["status"] == 200 or (req["status"] is None and req.get("body") is not None)


def _private_note(body: Any, *, operator: bool) -> bool:
    """Whether a ticket update's body is exactly a private note (and, for Richpanel, an operator's)."""
    ticket = body.get("ticket") if isinstance(body, dict) else None
    comment = ticket.get("comment") if isinstance(ticket, dict) and list(ticket) == ["comment"] else None
    return (isinstance(comment, dict) and comment.get("public") is False
            and (not operator or comment.get("sender_type") == "operator"))


# -- the Zendesk sandbox: tickets, pending, private comments, requests -------------------------

_ZD_WRITES = {"POST /api/v2/tickets", "PUT /api/v2/tickets/{id}"}


def _zendesk_kind(method: str, path: str) -> str:
    """The request's route, or ``METHOD path`` for anything opcore has no business sending."""
    rest = path.split("/api/v2/", 1)[-1]
    if rest == "tickets" and method in ("POST", "GET"):
        return "POST /api/v2/tickets" if method == "POST" else "GET /api/v2/tickets?external_id"
    if method == "GET" and rest == "groups":
        return "GET /api/v2/groups"
    if method == "PUT" and rest.startswith("tickets/"):
        return "PUT /api/v2/tickets/{id}"
    if method == "GET" and rest.startswith("tickets/") and rest.endswith("/comments"):
        return "GET /api/v2/tickets/{id}/comments"
    return f"{method} {path}"


def verify_zendesk(control: httpx.Client, claims: list[Claim], subdomain_of: dict[str, str],
                   result: ChaosResult, *, accepted_at: dict[str, float] | None = None) -> None:
    """Judge the Zendesk stores from the sandbox: one ticket per claim (by ``external_id``) in its own
    account, ``pending`` exactly for finished claims, no public comment, nothing else written."""
    accounts = {a["subdomain"]: a["tickets"] for a in control.get("/_sandbox/tickets").json()["accounts"]}
    store_of = {sub: store for store, sub in subdomain_of.items()}
    by_claim: dict[str, list[dict[str, Any]]] = {}
    claim_ids = {c.claim_id: c for c in claims}
    for subdomain, tickets in accounts.items():
        for ticket in tickets:
            result.zd_tickets += 1
            claim = claim_ids.get(ticket.get("external_id") or "")
            if claim is None or claim.store_id != store_of.get(subdomain):
                result.zd_stray += 1
                continue
            by_claim.setdefault(claim.claim_id, []).append(ticket)
            result.zd_public_comments += sum(1 for comment in ticket["comments"] if comment["public"])
    result.zd_missing = sum(1 for c in claims if c.claim_id not in by_claim)
    result.zd_duplicates = sum(1 for found in by_claim.values() if len(found) > 1)
    result.zd_pending_expected = sum(c.finished for c in claims)
    for c in claims:
        pending = any(t["status"] == "pending" for t in by_claim.get(c.claim_id, []))
        result.zd_pending_done += c.finished and pending
        result.zd_unexpected_pending += (not c.finished) and pending
    if accepted_at:
        result.zd_ticket_seconds = percentiles([min(t["created_at"] for t in found) - accepted_at[claim_id]
                                                for claim_id, found in by_claim.items() if claim_id in accepted_at])
    for req in control.get("/_sandbox/requests").json()["requests"]:
        kind = _zendesk_kind(req["method"], req["path"])
        result.zendesk_requests[kind] = result.zendesk_requests.get(kind, 0) + 1
        if req["method"] != "GET" and (kind not in _ZD_WRITES or (
                kind.startswith("PUT") and req.get("body") != {"ticket": {"status": "pending"}}
                and not _private_note(req.get("body"), operator=False))):
            result.zd_unexpected_writes += 1
        outcome = "dropped" if req.get("dropped") else str(req.get("status"))
        if outcome in ("dropped", "500", "429"):
            result.zd_injected[outcome] = result.zd_injected.get(outcome, 0) + 1


# -- the note mirror, judged from both stand-ins ------------------------------------------------

def judge_notes(rp_control: httpx.Client, zd_control: httpx.Client, claims: list[Claim], mirror_of: dict[str, bool],
                api_keys: dict[str, str], subdomain_of: dict[str, str], accepted_at: dict[str, float],
                result: ChaosResult) -> None:
    """Every message of a mirroring store is one private note on its claim's ticket, in order where
    its messages reached opcore within 2 s of each other (judged at 1.5 s, the rest being the
    sender's own latency); no note anywhere else; nothing written to a ticket that did not exist."""
    rp = rp_control.get("/_sandbox/tickets").json()["accounts"]
    zd = zd_control.get("/_sandbox/tickets").json()["accounts"]
    rp_by, _, _ = _tickets_by_claim(rp, [c for c in claims if c.store_id in api_keys], api_keys)
    store_of = {sub: store for store, sub in subdomain_of.items()}
    zd_by: dict[str, list[dict[str, Any]]] = {}
    by_id = {c.claim_id: c for c in claims}
    for account in zd:
        for ticket in account["tickets"]:
            claim = by_id.get(ticket.get("external_id") or "")
            if claim is not None and claim.store_id == store_of.get(account["subdomain"]):
                zd_by.setdefault(claim.claim_id, []).append(ticket)
    for account in rp + zd:
        result.notes_public += account.get("public_comments_after_creation", 0)
        result.writes_before_ticket += account.get("writes_to_unknown_tickets", 0)
    for c in claims:
        richpanel = c.store_id in api_keys
        tickets = [t for _, t in rp_by.get(c.claim_id, [])] if richpanel else zd_by.get(c.claim_id, [])
        notes = [n for t in tickets for n in t.get("notes", [])]
        expected = c.messages if mirror_of[c.store_id] else []
        tokens = [c.message_token(m["body"]["message_id"]) for m in expected]
        result.notes_expected += len(expected)
        result.notes_written += len(notes)
        positions: list[int | None] = []
        for token in tokens:
            found = [k for k, note in enumerate(notes) if token in note["body"]]
            result.notes_missing += not found
            result.notes_duplicated += len(found) > 1
            positions.append(found[0] if found else None)
        result.notes_unexpected += sum(1 for n in notes if not any(t in n["body"] for t in tokens))
        if richpanel:  # Richpanel renders a note's HTML: the message's own markup must be escaped
            result.notes_unescaped += sum("<i>" in n["body"] for n in notes)
        for a in range(len(expected)):
            for b in range(a + 1, len(expected)):
                ta, tb = accepted_at.get(expected[a]["id"]), accepted_at.get(expected[b]["id"])
                pa, pb = positions[a], positions[b]
                if ta and tb and abs(ta - tb) <= 1.5 and pa is not None and pb is not None and pa > pb:
                    result.notes_out_of_order += 1


# -- Redis: what must be absent -------------------------------------------------------------

def judge_redis(r: redis.Redis, result: ChaosResult, claims: list[Claim], helpdesk_of: dict[str, str]) -> None:
    """Dead letters (each needs a reason and a claim of the run), Dramatiq's DLQ, parked and queued work,
    and opcore's per-claim record, which must agree with the helpdesks once all is quiet."""
    from opcore_hooks.deadletters import DeadLetters

    ids = {c.claim_id for c in claims}
    for entry in DeadLetters(r, f"{NAMESPACE}:dead").list():
        result.dead_letters.append({"id": entry.id, "actor": entry.actor, "claim_id": entry.claim_id,
                                    "reason": entry.reason})
        if not entry.reason.strip() or entry.claim_id not in ids:
            result.unexplained_dead_letters += 1
    for key in r.scan_iter(f"{NAMESPACE}:dramatiq:*.XQ"):
        result.dramatiq_dead += int(r.zcard(key))
    for helpdesk in sorted(set(helpdesk_of.values())):
        for key in r.scan_iter(f"{NAMESPACE}:{helpdesk}:parked:*"):
            result.parked += int(r.llen(key))
    result.left_in_queues = sum(int(r.hlen(f"{NAMESPACE}:dramatiq:{q}.msgs")) for q in QUEUES)
    for c, (ticket, snooze) in zip(claims, claim_records(r, claims, helpdesk_of), strict=True):
        if ticket is None or (c.finished and snooze != b"done") or (not c.finished and snooze is not None):
            result.records_out_of_step += 1
            result.notes.append(f"claim {c.claim_id}: opcore records ticket={ticket!r} snooze={snooze!r}")
    stats = r.hgetall(f"{NAMESPACE}:richpanel:stats")
    result.delivery_stats = {k.decode(): int(v) for k, v in stats.items()}
    stats = r.hgetall(f"{NAMESPACE}:zendesk:stats")
    result.zendesk_stats = {k.decode(): int(v) for k, v in stats.items()}


# -- the widget --------------------------------------------------------------------------------

def check_widget_panels(http: httpx.Client, claims: list[Claim], signing: dict[str, str], iframes: dict[str, str],
                        result: ChaosResult, checked: Callable[[httpx.Response, str], httpx.Response],
                        helpdesk_of: dict[str, str]) -> None:
    """Every claim is in its customer's panel, in the last state sent: every other customer read
    through the store's iframe URL (no header), the rest by a signed JSON request."""
    customers: dict[tuple[str, str], list[Claim]] = {}
    for c in claims:
        customers.setdefault((c.store_id, c.email), []).append(c)
    for position, ((store, email), owned) in enumerate(customers.items()):
        if position % 2:
            answer = checked(http.get(iframe_target(iframes[store], email), headers={"accept": "application/json"}),
                             "GET widget by iframe URL (final check)")
        else:
            path, query = f"/widgets/{helpdesk_of[store]}/{store}", urlencode({"email": email})
            answer = checked(http.get(f"{path}?{query}", headers={
                "accept": "application/json", "X-OP-Signature": sign(signing[store], f"{path}?{query}", int(time.time()))}),
                "GET widget (final check)")
        if answer.status_code != 200:
            result.widget_claims_missing += len(owned)
            continue
        shown = {c["claim_id"]: c["claim_state"] for c in answer.json().get("claims", [])}
        for c in owned:
            if c.claim_id not in shown:
                result.widget_claims_missing += 1
                result.notes.append(f"claim {c.claim_id} is missing from its customer's panel")
            elif shown[c.claim_id] != c.final_state:
                result.widget_state_wrong += 1
                result.notes.append(f"claim {c.claim_id}: the panel shows {shown[c.claim_id]}, "
                                    f"the last state sent was {c.final_state}")


# -- secrets ---------------------------------------------------------------------------------

class SecretScanner:
    """Finds any of the run's secrets in bytes; counts what it looked at, records where it found one."""

    def __init__(self, secrets_: dict[str, str], customer_data: re.Pattern[bytes] | None = None) -> None:
        self.secrets = {label: value.encode() for label, value in secrets_.items()}
        #: What the plan's customers look like (emails, first names, phones): never in opcore's own
        #: logs (Redis and the helpdesks hold them by design; the stand-ins log their own paths).
        self.customer_data = customer_data
        self.leaks: list[str] = []
        self.checked: dict[str, int] = {}
        self.lock = threading.Lock()

    def scan(self, where: str, kind: str, data: bytes) -> None:
        with self.lock:
            self.checked[kind] = self.checked.get(kind, 0) + 1
            for label, value in self.secrets.items():
                if value in data:
                    self.leaks.append(f"{label} in {where}")

    def scan_answer(self, answer: httpx.Response, where: str) -> httpx.Response:
        """Scan an HTTP answer of opcore (headers and body) and hand it back, so a call can be wrapped."""
        self.scan(f"HTTP answer of {where}", "http answers",
                  b"\n".join(f"{k}: {v}".encode() for k, v in answer.headers.items()) + b"\n" + answer.content)
        return answer

    def scan_files(self, tmp: Path, root: Path) -> None:
        """The AOF and every process log in ``tmp``, and every file under ``root/cassettes``."""
        for aof in sorted(tmp.glob("appendonlydir/*")) + sorted(tmp.glob("*.aof")):
            self.scan(f"AOF file {aof.name}", "AOF files", aof.read_bytes())
        for log in sorted(tmp.glob("*.log")):
            data = log.read_bytes()
            self.scan(f"log {log.name}", "log files", data)
            if self.customer_data is not None and log.name.startswith(("serve", "worker")):
                found = self.customer_data.search(data)
                if found:
                    self.leaks.append(f"customer data ({found.group()[:12].decode(errors='replace')}…) in log {log.name}")
        for cassette in sorted((root / "cassettes").rglob("*")):
            if cassette.is_file():
                self.scan(f"cassette {cassette.relative_to(root)}", "cassettes", cassette.read_bytes())


def scan_redis(r: redis.Redis, scanner: SecretScanner) -> None:
    """Every key name and every value of every type, as bytes (pipelined, 500 keys at a time)."""
    batch: list[bytes] = []
    for key in r.scan_iter(count=1000):
        batch.append(key)
        if len(batch) >= 500:
            _scan_keys(r, batch, scanner)
            batch = []
    if batch:
        _scan_keys(r, batch, scanner)


def _scan_keys(r: redis.Redis, batch: list[bytes], scanner: SecretScanner) -> None:
    """Two round trips for the whole batch: every key's type, then every value read by its type."""
    pipe = r.pipeline(transaction=False)
    for key in batch:
        pipe.type(key)
    kinds = [k.decode() for k in pipe.execute()]
    pipe = r.pipeline(transaction=False)
    for key, kind in zip(batch, kinds, strict=True):
        if kind == "string":
            pipe.get(key)
        elif kind == "hash":
            pipe.hgetall(key)
        elif kind == "list":
            pipe.lrange(key, 0, -1)
        elif kind == "set":
            pipe.smembers(key)
        elif kind == "zset":
            pipe.zrange(key, 0, -1)
        elif kind == "stream":
            pipe.xrange(key)
        else:  # expired meanwhile
            pipe.exists(key)
    for key, kind, value in zip(batch, kinds, pipe.execute(), strict=True):
        scanner.scan(f"Redis key {key.decode(errors='replace')}", "redis keys",
                     key + b"\0" + b"\0".join(_value_parts(kind, value)))


def _value_parts(kind: str, value: Any) -> list[bytes]:
    """A value read by ``_scan_keys`` as a flat list of byte strings."""
    if kind == "hash":
        return [b for kv in value.items() for b in kv]
    if kind == "stream":
        return [b for _, fields in value for kv in fields.items() for b in kv]
    if kind == "string":
        return [value or b""]
    if kind in ("list", "set", "zset"):
        return list(value)
    return []
