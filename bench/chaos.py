"""Chaos run: nothing lost, nothing duplicated, no secret leaked, under crashes and a faulty Richpanel.

Everything runs as real processes on loopback, as in production:

- a private ``redis-server`` on a free port, AOF on (``--appendfsync always``) in a temporary
  directory, never the shared Redis;
- ``opcore richpanel-sandbox`` injecting 20-200 ms of latency, 5% 500s, 5% rate limits (the
  status flips between 429 and 492 every second, ``Retry-After`` alternating between seconds and
  an HTTP date) and 2% answers dropped after the work was done;
- one ``opcore serve`` and two ``opcore worker --processes 1 --threads 8``.

The harness configures S stores (one Richpanel account each) and provisions their widgets
through the internal API, then sends N claims as Order Protection would: half of them approved
or resolved within a second of their creation (a few even before it), some changed to a state
that must not snooze, about one event in ten delivered twice. The sender retries on 503 and on
connection errors, as Order Protection redelivers. Meanwhile a random worker is SIGKILLed every
few seconds and restarted, and Redis is SIGKILLed once, when half the events are out, and
restarted on the same port from its AOF. A widget reader loads signed panels throughout (and
unsigned or tampered ones, which must be refused).

When the faults stop, the run waits for the system to settle on its own, then judges it from
what the sandbox received (not from opcore's bookkeeping): every claim has exactly one ticket in
its store's account, every approved or resolved claim is snoozed after its ticket, no other
ticket is snoozed, nothing but tickets and snoozes was written, every dead letter has a reason,
nothing is left queued, parked or in Dramatiq's own dead-letter queue, and the stores' API keys
and widget signing secrets appear in no Redis key or value (nor the AOF), no log, no cassette
and no HTTP answer (other than the provisioning answer that hands the secret over).

    python bench/chaos.py --claims 200            # the CI size; prints the counts, exit 1 on failure
    python bench/chaos.py --claims 5000 --json out.json

Dramatiq re-delivers the messages of a killed worker only after its heartbeat times out and a
queue maintenance pass runs (each broker command starts one with a 0.1% chance). The run sets
``OPCORE_HEARTBEAT_TIMEOUT_MS`` (10 s by default) and, unless opcore's settings expose the
maintenance chance, runs a *janitor* that issues a maintenance-only broker command on each queue
every second: what the workers would eventually do themselves, sooner. ``--no-janitor`` turns it off.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlencode

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._servers import free_port, machine, wait_port  # noqa: E402
from opcore_hooks.crypto import generate_master_key  # noqa: E402
from opcore_hooks.signing import sign  # noqa: E402

NAMESPACE = "opcore"
DASHBOARD = "https://app.orderprotection.com"
FINISHED = ("APPROVED", "RESOLVED", "RESOLVED_BY_BRAND")
CLAIM_TYPES = ("DAMAGED", "DEFECTIVE_ITEM", "MISSING_ITEM", "WRONG_ITEM", "STOLEN",
               "ORDER_DELIVERED_NOT_RECEIVED", "RETURNED_TO_SENDER", "MULTIPLE")
QUEUES = ("opcore", "opcore.DQ", "richpanel", "richpanel.DQ")
_LINK = re.compile(r"/claims/view/([A-Za-z0-9_.\-]+)")


# -- results ---------------------------------------------------------------------------------

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
    settled: bool = False  # no message left in any queue (nothing more could happen)
    settle_seconds: float = 0.0
    wall_seconds: float = 0.0
    seed: int = 0
    machine: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
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
        }
        found = [f"{name}: {count}" for name, count in checks.items() if count]
        if not self.settled:
            found.insert(0, "messages were still queued at the deadline")
        return found

    @property
    def ok(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok, "failures": self.failures}

    def report(self) -> str:
        inj = self.injected
        req = self.richpanel_requests
        w = self.widget
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
        lines += [f"  dead letter {d['id']}: {d['reason']}" for d in self.dead_letters]
        lines += [
            f"worker kills: {self.worker_kills} (worker starts {self.worker_starts})   redis restarts: "
            f"{self.redis_restarts} (down {self.redis_down_seconds:.1f} s)",
            f"injected by the sandbox: 429 {inj.get('429', 0)}, 492 {inj.get('492', 0)}, 500 {inj.get('500', 0)}, "
            f"dropped {inj.get('dropped', 0)}",
            "requests to Richpanel: " + ", ".join(f"{k} {v}" for k, v in sorted(req.items())),
            f"unexpected writes: {self.unexpected_writes}   opcore records out of step with Richpanel: "
            f"{self.records_out_of_step}",
            f"widget: {w.get('ok', 0)} signed panels served, {w.get('refused', 0)} attacks refused, "
            f"{w.get('attack_accepted', 0)} attacks accepted; while Redis was down {w.get('unavailable', 0)} answered "
            f"503 JSON and {w.get('outage_other', 0)} something else "
            f"({', '.join(f'{k[7:]}: {v}' for k, v in w.items() if k.startswith('outage_') and k != 'outage_other') or 'none'}); "
            f"{w.get('5xx', 0)} other 5xx   claims missing from panels: {self.widget_claims_missing}, "
            f"wrong state: {self.widget_state_wrong}",
            "secrets checked: " + ", ".join(f"{k} {v}" for k, v in self.secrets_checked.items())
            + f"   leaks: {len(self.secret_leaks)}",
        ]
        lines += [f"  LEAK: {leak}" for leak in self.secret_leaks]
        if self.ingress_seconds:
            lines.append("event accepted after (first try to 202, retries included): " + _pcts(self.ingress_seconds))
        if self.ticket_seconds:
            lines.append("claim accepted to ticket in Richpanel: " + _pcts(self.ticket_seconds))
        if self.delivery_stats:
            lines.append("delivery stats: " + ", ".join(f"{k} {v}" for k, v in sorted(self.delivery_stats.items())))
        lines += [f"note: {n}" for n in self.notes]
        lines.append("RESULT: " + ("PASS" if self.ok else "FAIL: " + "; ".join(self.failures)))
        return "\n".join(lines)


def _pcts(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f} s" for k, v in values.items())


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(math.ceil(q * len(ordered))) - 1)]  # noqa: E731
    return {"p50": pick(0.50), "p99": pick(0.99), "max": ordered[-1]}


# -- the plan -----------------------------------------------------------------------------

@dataclass
class Claim:
    claim_id: str
    store_id: str
    email: str
    created: dict[str, Any]
    changes: list[tuple[float, dict[str, Any]]]  # (offset in seconds from the creation, event)
    final_state: str
    finished: bool


@dataclass(order=True)
class Send:
    at: float
    seq: int
    event: dict[str, Any] = field(compare=False)
    claim_id: str = field(compare=False)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_plan(n: int, stores: list[str], rng: random.Random, run_id: str, rate: float,
               t0: float) -> tuple[list[Claim], list[Send]]:
    """N claims spread over the stores at ``rate`` claims/s; the events and when to send each."""
    claims: list[Claim] = []
    sends: list[Send] = []
    customers = max(1, (n * 3) // 4)  # a quarter of the customers have two claims
    seq = 0
    for i in range(n):
        store = stores[i % len(stores)]
        cust = i % customers
        email = f"chaos.{run_id}.{cust}@example.com"
        claim_id = f"chaos-{run_id}-{i:05d}"
        at = i / rate
        when = t0 + at
        claim_type = CLAIM_TYPES[i % len(CLAIM_TYPES)]
        price = f"{rng.randint(5, 300)}.{rng.randint(0, 99):02d}"
        created = {
            "id": str(uuid.uuid4()), "topic": rng.choice(["claim.created", "claim/created"]),
            "created_at": _iso(when),
            "body": {
                "store_id": store, "claim_id": claim_id, "claim_number": f"OP-{100000 + i}",
                "order_id": f"order-{i}", "source_order_id": str(500000 + i), "created_at": _iso(when - 2),
                "claim_description": rng.choice(["Arrived damaged", "Never arrived", "Wrong colour — größe L",
                                                 "Box was empty", "パッケージが破損"]),
                "claim_type": claim_type, "claim_state": "NEW",
                "items": [{"item_id": f"i{i}", "item_name": f"Item {i}", "sku": f"SKU-{i}", "quantity": 1 + i % 3}],
                "customer": {"email": email, "first_name": f"Cust{cust}", "last_name": "Chaos",
                             "phone": f"+1555{cust:07d}"},
                "order": {"order_number": f"#{10000 + i}", "currency": "USD", "placed_at": _iso(when - 86400),
                          "line_items": [{"item_id": f"i{i}", "item_name": f"Item {i}", "quantity": 1,
                                          "unit_price": price}],
                          "subtotal": price, "shipping": "4.99", "tax": "1.00",
                          "total": f"{float(price) + 5.99:.2f}"},
            },
        }
        changes: list[tuple[float, dict[str, Any]]] = []
        finished = i % 2 == 0
        final = "NEW"
        if finished:
            final = rng.choice(FINISHED + ("APPROVED_CAMEL",))
            # within a second of the creation; one in ten arrives just before it (auto-approval)
            offset = rng.uniform(-0.3, 0.0) if rng.random() < 0.1 else rng.uniform(0.05, 1.0)
            event_time = _iso(when + 0.5 + max(offset, 0.0))
            if final == "APPROVED_CAMEL":
                final = "APPROVED"
                event = {"id": str(uuid.uuid4()), "topic": "claim/approved", "created_at": event_time,
                         "body": {"claimId": claim_id, "storeId": store,
                                  "resolutions": [{"type": "RESHIP", "itemId": f"i{i}", "quantity": 1}]}}
            else:
                event = {"id": str(uuid.uuid4()), "topic": "claim.state_changed", "created_at": event_time,
                         "body": {"store_id": store, "claim_id": claim_id, "claim_state": final,
                                  "previous_state": "NEW"}}
            changes.append((offset, event))
        elif rng.random() < 0.3:
            if rng.random() < 0.5:
                final = "DENIED"
                event = {"id": str(uuid.uuid4()), "topic": "claim.denied", "created_at": _iso(when + 1.5),
                         "body": {"claim_id": claim_id, "store_id": store}}
            else:
                final = "WAITING_FOR_BRAND"
                event = {"id": str(uuid.uuid4()), "topic": "claim.state_changed", "created_at": _iso(when + 1.5),
                         "body": {"store_id": store, "claim_id": claim_id, "claim_state": final}}
            changes.append((rng.uniform(0.1, 1.0), event))
        claims.append(Claim(claim_id, store, email, created, changes, final, finished))
        for offset, event in [(0.0, created), *changes]:
            sends.append(Send(at + offset, seq, event, claim_id))
            seq += 1
            if rng.random() < 0.1:  # Order Protection redelivers: the same event id again, soon
                sends.append(Send(at + offset + rng.uniform(0.0, 2.0), seq, event, claim_id))
                seq += 1
    sends.sort()
    return claims, sends


# -- processes ----------------------------------------------------------------------------

class Proc:
    """A child process we started, its log file, and nothing else: only ever killed by pid."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.args, self.env, self.log = name, args, env, log
        self.popen: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            out.write(f"\n--- start {time.strftime('%H:%M:%S')} ---\n".encode())
            out.flush()
            self.popen = subprocess.Popen(self.args, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL)

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        if self.alive:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        if not self.alive:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPCORE_")}
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _opcore(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "runner.py"), *args]


# -- the run ------------------------------------------------------------------------------

class Counter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[str, int] = {}

    def add(self, name: str, by: int = 1) -> None:
        with self.lock:
            self.values[name] = self.values.get(name, 0) + by

    def get(self, name: str) -> int:
        with self.lock:
            return self.values.get(name, 0)


class SecretScanner:
    """Finds any of the run's secrets in bytes; counts what it looked at, records where it found one."""

    def __init__(self, secrets_: dict[str, str]) -> None:
        self.secrets = {label: value.encode() for label, value in secrets_.items()}
        self.leaks: list[str] = []
        self.checked: dict[str, int] = {}
        self.lock = threading.Lock()

    def scan(self, where: str, kind: str, data: bytes) -> None:
        with self.lock:
            self.checked[kind] = self.checked.get(kind, 0) + 1
            for label, value in self.secrets.items():
                if value in data:
                    self.leaks.append(f"{label} in {where}")


def _tamper(header: str) -> str:
    """The same header with the MAC's last hex digit changed."""
    return header[:-1] + ("1" if header[-1] != "1" else "2")


def _log(progress: Callable[[str], None] | None, message: str) -> None:
    if progress is not None:
        progress(message)


def run(n: int = 200, *, seed: int | None = None, stores: int | None = None, rate: float | None = None,
        quota: int = 50, window: float = 10.0, kill_every: tuple[float, float] = (2.0, 5.0),
        kills: bool = True, redis_restart: bool = True, heartbeat_ms: int = 10_000, janitor: bool = True,
        fault_seconds_after_send: float = 15.0, timeout: float = 170.0, threads: int = 8,
        workdir: str | None = None, keep: bool = False,
        progress: Callable[[str], None] | None = None) -> ChaosResult:
    """Run the chaos scenario with ``n`` claims and return its figures (see the module docstring).

    ``timeout`` bounds the whole run; faults stop ``fault_seconds_after_send`` after the last event
    is accepted (or when all the work is visibly done, if sooner), and the system must then settle
    on its own before the deadline.
    """
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is not installed")
    started = time.monotonic()
    seed = random.randrange(1 << 30) if seed is None else seed
    rng = random.Random(seed)
    stores = stores or max(4, n // 100)
    rate = rate or (25.0 if n <= 1000 else 30.0)
    run_id = f"{seed:x}"
    result = ChaosResult(claims=n, stores=stores, seed=seed, machine=machine())
    tmp = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="opcore-chaos-"))
    tmp.mkdir(parents=True, exist_ok=True)
    counter = Counter()

    store_ids = [f"chaos-{run_id}-store-{s}" for s in range(stores)]
    api_keys = {s: "rp_chaos_" + secrets.token_urlsafe(24) for s in store_ids}
    webhook_secret, admin_token, master_key = (secrets.token_urlsafe(24), secrets.token_urlsafe(24),
                                                generate_master_key())
    redis_port, sandbox_port, serve_port = free_port(), free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    sandbox_url = f"http://127.0.0.1:{sandbox_port}"
    serve_url = f"http://127.0.0.1:{serve_port}"

    procs: list[Proc] = []
    redis_proc = Proc("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                                "--dir", str(tmp), "--appendonly", "yes", "--appendfsync", "always",
                                "--save", "", "--daemonize", "no", "--protected-mode", "yes"],
                      _env({}), tmp / "redis.log")
    procs.append(redis_proc)
    sandbox_args = ["richpanel-sandbox", "--port", str(sandbox_port), "--quota", str(quota),
                    "--window", str(window), "--latency-ms", "20", "200", "--error-rate", "0.05",
                    "--rate-limit-rate", "0.05", "--retry-after-form", "mixed", "--drop-rate", "0.02"]
    for key in api_keys.values():
        sandbox_args += ["--account", key]
    sandbox = Proc("sandbox", _opcore(*sandbox_args), _env({}), tmp / "sandbox.log")
    procs.append(sandbox)
    settings_env = {
        "OPCORE_REDIS_URL": redis_url, "OPCORE_WEBHOOK_SECRET": webhook_secret, "OPCORE_ADMIN_TOKEN": admin_token,
        "OPCORE_MASTER_KEY": master_key, "OPCORE_NAMESPACE": NAMESPACE, "OPCORE_DASHBOARD_URL": DASHBOARD,
        "OPCORE_HEARTBEAT_TIMEOUT_MS": str(heartbeat_ms),
        "OPCORE_RICHPANEL_API_URL": sandbox_url, "OPCORE_RICHPANEL_QUOTA": str(quota),
        "OPCORE_RICHPANEL_WINDOW_SECONDS": str(window), "OPCORE_RICHPANEL_TIMEOUT_SECONDS": "5",
    }
    from opcore_hooks.config import Settings

    maintenance_setting = next((f for f in Settings.model_fields if "maintenance" in f), None)
    if maintenance_setting:
        settings_env[f"OPCORE_{maintenance_setting.upper()}"] = "100000"
        janitor = False
        result.notes.append(f"broker maintenance chance set through OPCORE_{maintenance_setting.upper()}=100000 (10%)")
    elif janitor:
        result.notes.append("janitor on: a maintenance-only broker command per queue every second "
                            "(opcore exposes no maintenance-chance setting)")
    env = _env(settings_env)
    serve = Proc("serve", _opcore("--log-level", "INFO", "serve", "--port", str(serve_port)), env, tmp / "serve.log")
    procs.append(serve)
    workers = [Proc(f"worker-{w}", _opcore("--log-level", "INFO", "worker", "--processes", "1",
                                           "--threads", str(threads)), env, tmp / f"worker-{w}.log")
               for w in "AB"]
    procs.extend(workers)

    scanner = SecretScanner({
        **{f"API key of {s}": k for s, k in api_keys.items()},
        "webhook secret": webhook_secret, "admin token": admin_token, "master key": master_key,
    })
    r = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=2)
    stop = threading.Event()
    faults_on = threading.Event()
    redis_up = threading.Event()
    redis_lock = threading.Lock()
    redis_back = [0.0]  # monotonic time Redis last came back
    threads_: list[threading.Thread] = []

    def start_redis() -> None:
        redis_proc.start()
        wait_port(redis_port, 20)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # loading the AOF answers LOADING until done
            try:
                if r.ping():
                    break
            except redis.RedisError:
                time.sleep(0.05)
        redis_up.set()

    http = httpx.Client(base_url=serve_url, timeout=10, limits=httpx.Limits(max_connections=64))
    control = httpx.Client(base_url=sandbox_url, timeout=30)
    admin = {"Authorization": f"Bearer {admin_token}"}
    signing: dict[str, str] = {}

    def checked(answer: httpx.Response, where: str) -> httpx.Response:
        scanner.scan(f"HTTP answer of {where}", "http answers",
                     b"\n".join(f"{k}: {v}".encode() for k, v in answer.headers.items()) + b"\n" + answer.content)
        return answer

    try:
        # -- start everything -----------------------------------------------------------
        start_redis()
        sandbox.start()
        wait_port(sandbox_port, 30)
        control.put("/_sandbox/config", json={"seed": seed}).raise_for_status()
        serve.start()
        wait_port(serve_port, 30)
        for w in workers:
            w.start()
            result.worker_starts += 1
        _log(progress, f"chaos run: seed {seed}, {n} claims, {stores} stores, files in {tmp}")

        # -- stores and widgets through the internal API (the sandbox is already faulty) -----------
        for store in store_ids:
            body = {"api_key": api_keys[store], "default_channel": "email", "enabled": True}
            for attempt in range(40):
                answer = checked(http.put(f"/internal/integrations/richpanel/stores/{store}", json=body,
                                          headers=admin), "PUT settings")
                if answer.status_code == 200:
                    break
                time.sleep(min(float(answer.headers.get("retry-after", "0.3")), 3.0))
            else:
                raise RuntimeError(f"store {store} could not be configured: {answer.status_code} {answer.text}")
            answer = http.post(f"/internal/integrations/richpanel/stores/{store}/widget", headers=admin)
            answer.raise_for_status()  # the one answer that carries a secret, by design: not scanned
            signing[store] = answer.json()["signing_secret"]
            scanner.secrets[f"widget signing secret of {store}"] = signing[store].encode()
            checked(http.get(f"/internal/integrations/richpanel/stores/{store}", headers=admin), "GET settings")

        # -- the plan ---------------------------------------------------------------------
        t0 = time.time() + 1.0
        claims, sends = build_plan(n, store_ids, rng, run_id, rate, t0)
        by_id = {c.claim_id: c for c in claims}
        result.events_planned = len(sends)
        result.snoozes_expected = sum(c.finished for c in claims)
        sent_claims: list[Claim] = []
        ingress_latency: list[float] = []
        accepted_at: dict[str, float] = {}
        sent_lock = threading.Lock()
        half = len(sends) // 2
        done_sending = threading.Event()
        accepted_count = Counter()

        # -- sender -------------------------------------------------------------------------
        def deliver(item: Send) -> None:
            payload = json.dumps(item.event).encode()
            headers = {"x-webhook-secret": webhook_secret, "content-type": "application/json"}
            delay = 0.1
            first = time.monotonic()
            deadline = first + max(60.0, timeout)
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    answer = http.post("/webhooks/orderprotection", content=payload, headers=headers)
                except httpx.HTTPError:
                    counter.add("send_retries")
                else:
                    checked(answer, "POST /webhooks/orderprotection")
                    if answer.status_code in (200, 202):
                        if answer.status_code == 202:
                            counter.add("accepted")
                        else:
                            counter.add("duplicate" if answer.json().get("status") == "duplicate" else "ignored")
                        with sent_lock:
                            ingress_latency.append(time.monotonic() - first)
                            if item.event["topic"] in ("claim.created", "claim/created"):
                                accepted_at.setdefault(item.claim_id, time.time())
                        break
                    if answer.status_code < 500:
                        counter.add("refused")
                        result.notes.append(f"event {item.event['id']} refused: {answer.status_code} {answer.text[:200]}")
                        break
                    counter.add("send_retries")
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
            else:
                counter.add("failed")
            accepted_count.add("done")
            if item.event["topic"] in ("claim.created", "claim/created"):
                with sent_lock:
                    sent_claims.append(by_id[item.claim_id])

        def sender() -> None:
            pool = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="chaos-send")
            futures = []
            for item in sends:
                wait = t0 + item.at - time.time()
                if wait > 0 and stop.wait(wait):
                    break
                futures.append(pool.submit(deliver, item))
            concurrent.futures.wait(futures)
            pool.shutdown()
            done_sending.set()

        # -- faults ----------------------------------------------------------------------------
        def restart_redis() -> None:
            with redis_lock:
                redis_up.clear()
                down = time.monotonic()
                redis_proc.kill()
                time.sleep(1.5)  # the ingress answers 503 meanwhile
                start_redis()
                redis_back[0] = time.monotonic()
                result.redis_down_seconds = time.monotonic() - down
                result.redis_restarts += 1
            _log(progress, f"redis restarted (down {result.redis_down_seconds:.1f} s)")

        def chaos_monkey() -> None:
            restarted = not redis_restart
            next_kill = time.monotonic() + rng.uniform(*kill_every)
            while faults_on.is_set() and not stop.is_set():
                if not restarted and accepted_count.get("done") >= half:
                    restart_redis()
                    restarted = True
                if kills and time.monotonic() >= next_kill:
                    victim = rng.choice(workers)
                    victim.kill()
                    result.worker_kills += 1
                    time.sleep(rng.uniform(0.2, 1.0))
                    victim.start()
                    result.worker_starts += 1
                    next_kill = time.monotonic() + rng.uniform(*kill_every)
                for w in workers:  # a worker that died on its own is restarted too, and counted
                    if not w.alive and faults_on.is_set():
                        counter.add("worker_died")
                        w.start()
                        result.worker_starts += 1
                time.sleep(0.05)

        def flip_limit_status() -> None:
            status = 429
            while not stop.wait(1.0):
                status = 492 if status == 429 else 429
                try:
                    control.put("/_sandbox/config", json={"limit_status": status})
                except httpx.HTTPError:
                    pass

        def run_janitor() -> None:
            from dramatiq.brokers.redis import RedisBroker

            client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=2)
            broker = RedisBroker(client=client, namespace=f"{NAMESPACE}:dramatiq", maintenance_chance=1_000_000,
                                 heartbeat_timeout=heartbeat_ms)
            while not stop.wait(1.0):
                for queue in QUEUES:
                    try:
                        broker.do_fetch(queue, 0)  # prefetch 0: fetches nothing, runs maintenance
                    except redis.RedisError:
                        break
            try:
                client.zrem(f"{NAMESPACE}:dramatiq:__heartbeats__", broker.broker_id)
            except redis.RedisError:
                pass
            client.close()

        def widget_reader() -> None:
            wrng = random.Random(seed + 1)
            client = httpx.Client(base_url=serve_url, timeout=10)
            while not stop.wait(0.25):
                with sent_lock:
                    if not sent_claims:
                        continue
                    claim = wrng.choice(sent_claims)
                path = f"/widgets/richpanel/{claim.store_id}"
                query = urlencode({"email": claim.email})
                now = int(time.time())
                attack = wrng.random() < 0.25
                if attack:
                    kind = wrng.choice(["unsigned", "tampered", "other_store", "expired", "other_query"])
                    other = wrng.choice([s for s in store_ids if s != claim.store_id] or store_ids)
                    header = {
                        "unsigned": None,
                        "tampered": _tamper(sign(signing[claim.store_id], f"{path}?{query}", now)),
                        "other_store": sign(signing[other], f"{path}?{query}", now),
                        "expired": sign(signing[claim.store_id], f"{path}?{query}", now - 301),
                        "other_query": sign(signing[claim.store_id], f"{path}?email=someone%40example.com", now),
                    }[kind]
                else:
                    header = sign(signing[claim.store_id], f"{path}?{query}", now)
                headers = {"accept": wrng.choice(["application/json", "text/html"])}
                if header:
                    headers["X-OP-Signature"] = header
                try:
                    answer = checked(client.get(f"{path}?{query}", headers=headers), "GET widget")
                except httpx.HTTPError:
                    counter.add("widget_transport_error")
                    continue
                status = answer.status_code
                if attack:
                    counter.add("widget_refused" if status == 401 else "widget_attack_accepted"
                                if status < 300 else f"widget_attack_{status}")
                elif status == 200:
                    counter.add("widget_ok")
                elif status >= 500 and (not redis_up.is_set() or time.monotonic() - redis_back[0] < 2.0):
                    # answered while Redis was down (or reconnecting): 503 with a JSON error is right
                    json_error = answer.headers.get("content-type", "").startswith("application/json")
                    counter.add("widget_unavailable" if status == 503 and json_error else "widget_outage_other")
                    if not (status == 503 and json_error):
                        counter.add(f"widget_outage_{status}")
                elif status >= 500:
                    counter.add("widget_5xx")
                    counter.add(f"widget_{status}")
                else:
                    counter.add(f"widget_{status}")
            client.close()

        def done_in_redis() -> bool:
            """opcore's own view (cheap to poll): every claim has a ticket id, every snooze is done."""
            try:
                pipe = r.pipeline(transaction=False)
                for c in claims:
                    pipe.hmget(f"{NAMESPACE}:richpanel:claim:{c.store_id}:{c.claim_id}", "ticket_id", "snooze")
                rows = pipe.execute()
            except redis.RedisError:
                return False
            return all(t is not None and (not c.finished or s == b"done") for c, (t, s) in zip(claims, rows))

        def queues_empty() -> int:
            try:
                pipe = r.pipeline(transaction=False)
                for q in QUEUES:
                    pipe.hlen(f"{NAMESPACE}:dramatiq:{q}.msgs")
                return sum(pipe.execute())
            except redis.RedisError:
                return -1

        faults_on.set()
        for target in (sender, chaos_monkey, flip_limit_status, widget_reader) + ((run_janitor,) if janitor else ()):
            t = threading.Thread(target=target, name=f"chaos-{target.__name__}", daemon=True)
            t.start()
            threads_.append(t)
        monkey = threads_[1]

        deadline = started + timeout
        # faults run while sending and a while after, unless the work is visibly done sooner
        while time.monotonic() < deadline:
            if done_sending.is_set():
                break
            time.sleep(0.2)
        sent_at = time.monotonic()
        _log(progress, f"all events sent after {sent_at - started:.1f} s; "
                       f"{counter.get('accepted')} accepted, faults go on for up to {fault_seconds_after_send:g} s")
        while time.monotonic() < min(deadline, sent_at + fault_seconds_after_send):
            if done_in_redis():
                break
            time.sleep(0.5)
        faults_on.clear()
        monkey.join(30)  # finishes its current kill/restart first
        redis_up.wait(30)
        for w in workers:
            if not w.alive:
                w.start()
                result.worker_starts += 1
        faults_off = time.monotonic()
        _log(progress, f"faults stopped after {faults_off - started:.1f} s "
                       f"({result.worker_kills} worker kills, {result.redis_restarts} redis restarts); settling")

        # -- settle: wait until no message is left anywhere (every queue's message hash is empty, which
        # includes delayed messages and those held by a dead worker); from then on nothing can change ----
        last_report = 0.0
        while time.monotonic() < deadline:
            left = queues_empty()
            if left == 0:
                time.sleep(2.0)
                if queues_empty() == 0:
                    result.settled = True
                    break
            if time.monotonic() - last_report > 10:
                last_report = time.monotonic()
                _log(progress, f"  settling: {left} message(s) still queued")
            time.sleep(0.5)
        result.settle_seconds = time.monotonic() - faults_off
        stop.set()
        for t in threads_:
            t.join(15)

        # -- judge ------------------------------------------------------------------------------
        result.events_accepted = counter.get("accepted")
        result.events_duplicate = counter.get("duplicate")
        result.events_failed = counter.get("failed") + counter.get("refused")
        result.send_retries = counter.get("send_retries")
        verify_sandbox(control, claims, api_keys, result, dry=False, accepted_at=accepted_at)
        result.ingress_seconds = percentiles(ingress_latency)
        judge_redis(r, result, claims)
        check_widget_panels(http, claims, signing, result, checked, rng)
        result.widget = {
            "ok": counter.get("widget_ok"), "refused": counter.get("widget_refused"),
            "attack_accepted": counter.get("widget_attack_accepted"),
            "unavailable": counter.get("widget_unavailable"), "5xx": counter.get("widget_5xx"),
            "outage_other": counter.get("widget_outage_other"),
            **{k.removeprefix("widget_"): v for k, v in counter.values.items()
               if k.startswith("widget_") and k.removeprefix("widget_") not in
               ("ok", "refused", "attack_accepted", "unavailable", "5xx", "outage_other")},
        }
        if result.widget["outage_other"]:
            result.notes.append(f"FINDING: while Redis was down the widget answered {result.widget['outage_other']} "
                                "request(s) with something other than a 503 JSON error (see the widget line)")
        if counter.get("worker_died"):
            result.notes.append(f"{counter.get('worker_died')} worker(s) exited on their own and were restarted")

        # -- secrets: Redis (keys, values, the AOF), logs, cassettes -------------------------------
        scan_redis(r, scanner)
    finally:
        stop.set()
        http.close()
        for p in reversed(procs):
            if p is not redis_proc:
                p.stop()
        try:
            r.close()
        except Exception:  # noqa: BLE001
            pass
        redis_proc.stop()
        control.close()
    for aof in sorted(tmp.glob("appendonlydir/*")) + sorted(tmp.glob("*.aof")):
        scanner.scan(f"AOF file {aof.name}", "AOF files", aof.read_bytes())
    for log in sorted(tmp.glob("*.log")):
        scanner.scan(f"log {log.name}", "log files", log.read_bytes())
    for cassette in sorted((ROOT / "cassettes").rglob("*")):
        if cassette.is_file():
            scanner.scan(f"cassette {cassette.relative_to(ROOT)}", "cassettes", cassette.read_bytes())
    result.secret_leaks = sorted(set(scanner.leaks))
    result.secrets_checked = dict(scanner.checked)
    result.wall_seconds = time.monotonic() - started
    if not keep and result.ok and not workdir:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        result.notes.append(f"logs and AOF kept in {tmp}")
    return result


# -- judging --------------------------------------------------------------------------------------

def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _mask(key: str) -> str:
    from plugins.richpanel.client import mask_key

    return mask_key(key)


def verify_sandbox(control: httpx.Client, claims: list[Claim], api_keys: dict[str, str], result: ChaosResult,
                   *, dry: bool, accepted_at: dict[str, float] | None = None) -> bool:
    """Judge from the sandbox's tickets and request log; ``dry`` only says whether all is well yet."""
    accounts = control.get("/_sandbox/tickets").json()["accounts"]
    by_claim: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    stray = 0
    tickets_total = 0
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
    missing = sum(1 for c in claims if c.claim_id not in by_claim)
    duplicates = sum(1 for v in by_claim.values() if len(v) > 1)
    snoozed = unexpected = 0
    for c in claims:
        tickets = [t for _, t in by_claim.get(c.claim_id, [])]
        is_snoozed = any(t.get("snoozed_till") == "0" for t in tickets)
        if c.finished and is_snoozed:
            snoozed += 1
        elif is_snoozed:
            unexpected += 1
    if dry:
        return not missing and not duplicates and not stray and snoozed == result.snoozes_expected and not unexpected
    result.tickets, result.missing, result.duplicates, result.stray_tickets = tickets_total, missing, duplicates, stray
    result.snoozes_done, result.unexpected_snoozes = snoozed, unexpected

    # the request log: faults injected, what was written, and snoozes never before their ticket
    created_at: dict[str, float] = {}
    for account in accounts:
        for ticket in account["tickets"]:
            created_at[ticket["id"]] = _epoch(ticket["created_at"])
    if accepted_at:
        result.ticket_seconds = percentiles([
            min(_epoch(t["created_at"]) for _, t in found) - accepted_at[claim_id]
            for claim_id, found in by_claim.items() if claim_id in accepted_at])
    requests = control.get("/_sandbox/requests").json()["requests"]
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
        if method == "POST" and path == "/v1/tickets":
            kind = "POST /v1/tickets"
        elif method == "PUT" and path.startswith("/v1/tickets/") and path.endswith("/snooze"):
            kind = "PUT /v1/tickets/{id}/snooze"
            ticket_id = path[len("/v1/tickets/"):-len("/snooze")]
            if ticket_id not in created_at or req["time"] < created_at[ticket_id]:
                before += 1
        elif method == "GET" and path.startswith("/v1/tickets/email/"):
            kind = "GET /v1/tickets/email/{email}"
        elif method == "GET" and path == "/v1/teams":
            kind = "GET /v1/teams"
        else:
            kind = f"{method} {path}"
            if method != "GET":
                unexpected_writes += 1
        kinds[kind] = kinds.get(kind, 0) + 1
    result.injected, result.richpanel_requests = injected, kinds
    result.unexpected_writes, result.snooze_before_ticket = unexpected_writes, before
    return result.ok


def judge_redis(r: redis.Redis, result: ChaosResult, claims: list[Claim]) -> None:
    from opcore_hooks.deadletters import DeadLetters

    ids = {c.claim_id for c in claims}
    for entry in DeadLetters(r, f"{NAMESPACE}:dead").list():
        result.dead_letters.append({"id": entry.id, "actor": entry.actor, "claim_id": entry.claim_id,
                                    "reason": entry.reason})
        if not entry.reason.strip() or entry.claim_id not in ids:
            result.unexplained_dead_letters += 1
    for key in r.scan_iter(f"{NAMESPACE}:dramatiq:*.XQ"):
        result.dramatiq_dead += int(r.zcard(key))
    for key in r.scan_iter(f"{NAMESPACE}:richpanel:parked:*"):
        result.parked += int(r.llen(key))
    result.left_in_queues = sum(int(r.hlen(f"{NAMESPACE}:dramatiq:{q}.msgs")) for q in QUEUES)
    pipe = r.pipeline(transaction=False)
    for c in claims:
        pipe.hmget(f"{NAMESPACE}:richpanel:claim:{c.store_id}:{c.claim_id}", "ticket_id", "snooze")
    for c, (ticket, snooze) in zip(claims, pipe.execute()):
        if ticket is None or (c.finished and snooze != b"done") or (not c.finished and snooze is not None):
            result.records_out_of_step += 1
            result.notes.append(f"claim {c.claim_id}: opcore records ticket={ticket!r} snooze={snooze!r}")
    stats = r.hgetall(f"{NAMESPACE}:richpanel:stats")
    result.delivery_stats = {k.decode(): int(v) for k, v in stats.items()}


def check_widget_panels(http: httpx.Client, claims: list[Claim], signing: dict[str, str], result: ChaosResult,
                        checked: Callable[[httpx.Response, str], httpx.Response], rng: random.Random) -> None:
    """Every claim is in its customer's panel (signed JSON request), in the last state sent."""
    customers: dict[tuple[str, str], list[Claim]] = {}
    for c in claims:
        customers.setdefault((c.store_id, c.email), []).append(c)
    for (store, email), owned in customers.items():
        path, query = f"/widgets/richpanel/{store}", urlencode({"email": email})
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


def scan_redis(r: redis.Redis, scanner: SecretScanner) -> None:
    """Every key name and every value of every type, as bytes (pipelined, 500 keys at a time)."""
    batch: list[bytes] = []

    def flush() -> None:
        pipe = r.pipeline(transaction=False)
        for key in batch:
            pipe.type(key)
        kinds = [k.decode() for k in pipe.execute()]
        pipe = r.pipeline(transaction=False)
        for key, kind in zip(batch, kinds):
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
        for key, kind, value in zip(batch, kinds, pipe.execute()):
            if kind == "hash":
                parts = [b for kv in value.items() for b in kv]
            elif kind == "stream":
                parts = [b for _, fields in value for kv in fields.items() for b in kv]
            elif kind == "string":
                parts = [value or b""]
            elif kind in ("list", "set", "zset"):
                parts = list(value)
            else:
                parts = []
            scanner.scan(f"Redis key {key.decode(errors='replace')}", "redis keys", key + b"\0" + b"\0".join(parts))
        batch.clear()

    for key in r.scan_iter(count=1000):
        batch.append(key)
        if len(batch) >= 500:
            flush()
    if batch:
        flush()


# -- command line -------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--claims", "-n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stores", type=int, default=None, help="default: max(4, claims // 100)")
    parser.add_argument("--rate", type=float, default=None, help="claims created per second (default 25, 30 above 1000)")
    parser.add_argument("--quota", type=int, default=50, help="requests per key and window, opcore and sandbox")
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=None, help="seconds for the whole run (default: scales with N)")
    parser.add_argument("--heartbeat-ms", type=int, default=10_000)
    parser.add_argument("--no-janitor", action="store_true")
    parser.add_argument("--no-kills", action="store_true")
    parser.add_argument("--no-redis-restart", action="store_true")
    parser.add_argument("--fault-seconds", type=float, default=15.0, help="faults go on this long after the last event")
    parser.add_argument("--keep", action="store_true", help="keep the logs and the AOF")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    timeout = args.timeout or max(170.0, 300.0 + args.claims / (args.rate or 25.0) * 2.5)
    result = run(args.claims, seed=args.seed, stores=args.stores, rate=args.rate, quota=args.quota,
                 window=args.window, timeout=timeout, heartbeat_ms=args.heartbeat_ms, janitor=not args.no_janitor,
                 kills=not args.no_kills, redis_restart=not args.no_redis_restart,
                 fault_seconds_after_send=args.fault_seconds, keep=args.keep,
                 progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(result.report())
    if args.json:
        args.json.write_text(json.dumps(result.as_dict(), indent=2, default=str))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
