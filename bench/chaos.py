"""Chaos run: nothing lost, nothing duplicated, no secret leaked, under crashes and faulty helpdesks.

Everything runs as real processes on loopback, as in production:

- a private ``redis-server`` on a free port, AOF on (``--appendfsync always``) in a temporary
  directory, never the shared Redis;
- ``opcore richpanel-sandbox`` injecting 20-200 ms of latency, 5% 500s, 5% rate limits (the
  status flips between 429 and 492 every second, ``Retry-After`` alternating between seconds and
  an HTTP date) and 2% answers dropped after the work was done;
- ``opcore zendesk-sandbox`` injecting 5% 500s and 2% answers dropped after the ticket was made,
  each account's budget twice the Richpanel quota a window, 30% of it spent by other apps;
- one ``opcore serve`` and two ``opcore worker --processes 1 --threads 8``.

The harness configures S stores, half of them on Zendesk (one account each), and provisions their widgets
through the internal API, then sends N claims as Order Protection would: half of them approved
or resolved within a second of their creation (a few even before it), some changed to a state
that must not snooze, about one event in ten delivered twice. Four claims in ten get one to three
messages of their conversation (message.created, sent within 1.5 s of each other in any order, a
few before the claim), and the note mirror is on for half the stores of each helpdesk. The sender retries on 503 and on
connection errors, as Order Protection redelivers. Meanwhile a random worker is SIGKILLed every
few seconds and restarted, and Redis is SIGKILLed once, when half the events are out, and
restarted on the same port from its AOF. A widget reader loads panels throughout, half through
each store's iframe URL and half signed (and forged, tampered or unsigned ones, which must be refused).

When the faults stop, the run waits for the system to settle on its own, then judges it from
what each sandbox received (not from opcore's bookkeeping): every claim has exactly one ticket in
its store's account, every approved or resolved claim is snoozed (Richpanel) or pending (Zendesk)
after its ticket, no other ticket is, every message of a mirroring store is one private note on
its claim's ticket (in created_at order where its messages reached opcore within 1.5 s of each
other, its markup escaped), no other note exists, no comment after creation is public, nothing
was written to a ticket before it existed, nothing but tickets, their finishing calls and notes
was written, every dead letter has a reason,
nothing is left queued, parked or in Dramatiq's own dead-letter queue, and the stores' API keys
and widget signing secrets appear in no Redis key or value (nor the AOF), no log, no cassette
and no HTTP answer (other than the provisioning answer that hands the secret over).

    python bench/chaos.py --claims 200            # the CI size; prints the counts, exit 1 on failure
    python bench/chaos.py --claims 5000 --json out.json

Dramatiq re-delivers the messages of a killed worker only after its heartbeat times out and a
queue maintenance pass runs, which each broker command starts with a chance of
``OPCORE_BROKER_MAINTENANCE_CHANCE`` in a million (Dramatiq's 0.1% by default: about once a minute
per queue with two idle workers). The run sets ``OPCORE_HEARTBEAT_TIMEOUT_MS`` (10 s by default)
and ``OPCORE_BROKER_MAINTENANCE_CHANCE=100000`` (10%), so recovery takes seconds, not minutes.

This module is the orchestration; the parts live beside it: ``_chaos_plan`` (the workload),
``_chaos_procs`` (the processes), ``_chaos_traffic`` (sender and widget reader),
``_chaos_faults`` (kills and restarts), ``_chaos_judge`` and ``_chaos_result`` (the verdict).
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._chaos_faults import Faults  # noqa: E402
from bench._chaos_judge import (  # noqa: E402
    SecretScanner,
    check_widget_panels,
    judge_notes,
    judge_redis,
    queued_messages,
    scan_redis,
    verify_sandbox,
    verify_zendesk,
    work_looks_done,
)
from bench._chaos_plan import CUSTOMER_DATA, Claim, Send, build_plan  # noqa: E402
from bench._chaos_procs import MAINTENANCE_CHANCE, ZENDESK_EMAIL, Cluster, Proc  # noqa: E402
from bench._chaos_result import ChaosResult, percentiles  # noqa: E402
from bench._chaos_traffic import Counter, Sender, WidgetReader  # noqa: E402
from bench._servers import machine  # noqa: E402
from opcore_hooks.crypto import generate_master_key  # noqa: E402

# The names this module had before it was split, for anyone importing them from here.
__all__ = ["run", "main", "ChaosResult", "Claim", "Send", "build_plan", "percentiles", "Proc", "SecretScanner",
           "verify_sandbox", "judge_redis", "check_widget_panels", "scan_redis"]


def run(n: int = 200, *, seed: int | None = None, stores: int | None = None, rate: float | None = None,
        quota: int = 50, window: float = 10.0, kill_every: tuple[float, float] = (2.0, 5.0),
        kills: bool = True, redis_restart: bool = True, heartbeat_ms: int = 10_000,
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
    chaos = _Run(n, seed=seed, stores=stores, rate=rate, quota=quota, window=window, heartbeat_ms=heartbeat_ms,
                 timeout=timeout, threads=threads, workdir=workdir, progress=progress)
    try:
        chaos.set_up()
        chaos.send_under_faults(kill_every=kill_every, kills=kills, redis_restart=redis_restart,
                                fault_seconds=fault_seconds_after_send)
        chaos.settle()
        chaos.judge()
    finally:
        chaos.shut_down()
    return chaos.finish(keep=keep)


class _Run:
    """One chaos run's state, moved through its steps by ``run``: set up, send under faults, settle, judge."""

    def __init__(self, n: int, *, seed: int | None, stores: int | None, rate: float | None, quota: int,
                 window: float, heartbeat_ms: int, timeout: float, threads: int, workdir: str | None,
                 progress: Callable[[str], None] | None) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.n, self.timeout, self.progress, self.workdir = n, timeout, progress, workdir
        self.seed = random.randrange(1 << 30) if seed is None else seed
        self.rng = random.Random(self.seed)
        self.rate = rate or (25.0 if n <= 1000 else 30.0)
        self.run_id = f"{self.seed:x}"
        stores = stores or max(4, n // 100)
        self.result = ChaosResult(claims=n, stores=stores, seed=self.seed, machine=machine())
        self.tmp = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="opcore-chaos-"))
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.counter = Counter()
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

        self.store_ids = [f"chaos-{self.run_id}-store-{s}" for s in range(stores)]
        # Stores 0 and 1 on Richpanel, 2 and 3 on Zendesk, and so on: the plan finishes the claims of
        # every other store (claim i goes to store i % S, finished when i is even), so both
        # helpdesks get finished claims and others.
        self.helpdesk_of = {s: ("zendesk" if (i // 2) % 2 else "richpanel") for i, s in enumerate(self.store_ids)}
        # The note mirror is on for stores 0, 2, 4, ...: half of each helpdesk's stores.
        self.mirror_of = {s: i % 2 == 0 for i, s in enumerate(self.store_ids)}
        self.api_keys = {s: "rp_chaos_" + secrets.token_urlsafe(24) for s in self.store_ids
                         if self.helpdesk_of[s] == "richpanel"}
        self.subdomain_of = {s: f"chaos-{self.run_id}-{i}" for i, s in enumerate(self.store_ids)
                             if self.helpdesk_of[s] == "zendesk"}
        self.zendesk_tokens = {s: "zd_chaos_" + secrets.token_urlsafe(24) for s in self.subdomain_of}
        self.webhook_secret, admin_token, master_key = (secrets.token_urlsafe(24), secrets.token_urlsafe(24),
                                                        generate_master_key())
        self.cluster = Cluster(self.tmp, api_keys=list(self.api_keys.values()), quota=quota, window=window,
                               zendesk_tokens={self.subdomain_of[s]: t for s, t in self.zendesk_tokens.items()},
                               heartbeat_ms=heartbeat_ms, threads=threads, opcore_settings={
                                   "OPCORE_WEBHOOK_SECRET": self.webhook_secret, "OPCORE_ADMIN_TOKEN": admin_token,
                                   "OPCORE_MASTER_KEY": master_key})
        self.result.notes.append("broker maintenance chance set through "
                                 f"OPCORE_BROKER_MAINTENANCE_CHANCE={MAINTENANCE_CHANCE} (10%)")
        self.scanner = SecretScanner({
            **{f"API key of {s}": k for s, k in self.api_keys.items()},
            **{f"Zendesk token of {s}": t for s, t in self.zendesk_tokens.items()},
            "webhook secret": self.webhook_secret, "admin token": admin_token, "master key": master_key,
        }, customer_data=CUSTOMER_DATA)
        self.http = httpx.Client(base_url=self.cluster.serve_url, timeout=10, limits=httpx.Limits(max_connections=64))
        self.admin = {"Authorization": f"Bearer {admin_token}"}
        self.signing: dict[str, str] = {}
        self.iframes: dict[str, str] = {}

    def _log(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)

    # -- set up -------------------------------------------------------------------------------

    def set_up(self) -> None:
        """Start every process, then configure the stores and their widgets (the sandbox is already faulty)."""
        self.cluster.start(self.seed)
        self._log(f"chaos run: seed {self.seed}, {self.n} claims, {len(self.store_ids)} stores, files in {self.tmp}")
        for store in self.store_ids:
            self._provision(store)

    def _provision(self, store: str) -> None:
        """Save the store's settings (retried: the key check meets the sandbox's faults), provision its widget."""
        checked = self.scanner.scan_answer
        if self.helpdesk_of[store] == "zendesk":
            body = {"subdomain": self.subdomain_of[store], "email": ZENDESK_EMAIL, "api_token": self.zendesk_tokens[store],
                    "mirror_messages": self.mirror_of[store]}
        else:
            body = {"api_key": self.api_keys[store], "default_channel": "email", "enabled": True,
                    "mirror_messages": self.mirror_of[store]}
        path = f"/internal/integrations/{self.helpdesk_of[store]}/stores/{store}"
        for _ in range(40):
            answer = checked(self.http.put(path, json=body, headers=self.admin), "PUT settings")
            if answer.status_code == 200:
                break
            time.sleep(min(float(answer.headers.get("retry-after", "0.3")), 3.0))
        else:
            raise RuntimeError(f"store {store} could not be configured: {answer.status_code} {answer.text}")
        answer = self.http.post(f"{path}/widget", headers=self.admin)
        answer.raise_for_status()  # the one answer that carries a secret, by design: not scanned
        self.signing[store], self.iframes[store] = answer.json()["signing_secret"], answer.json()["iframe_url"]
        self.scanner.secrets[f"widget signing secret of {store}"] = self.signing[store].encode()
        token = self.iframes[store].split("token=", 1)[1].split("&", 1)[0]
        self.scanner.secrets[f"widget iframe token of {store}"] = token.encode()
        checked(self.http.get(path, headers=self.admin), "GET settings")

    # -- sending, under faults --------------------------------------------------------------

    def send_under_faults(self, *, kill_every: tuple[float, float], kills: bool, redis_restart: bool,
                          fault_seconds: float) -> None:
        """Send the plan while the faults run; keep them up ``fault_seconds`` more, then stop them."""
        t0 = time.time() + 1.0
        self.claims, sends = build_plan(self.n, self.store_ids, self.rng, self.run_id, self.rate, t0)
        self.result.events_planned = len(sends)
        self.result.snoozes_expected = sum(c.finished for c in self.claims if self.helpdesk_of[c.store_id] == "richpanel")
        self.sender = Sender(self.http, sends, self.claims, t0=t0, webhook_secret=self.webhook_secret,
                             timeout=self.timeout, stop=self.stop, counter=self.counter,
                             checked=self.scanner.scan_answer, notes=self.result.notes)
        self.faults = Faults(self.cluster, self.sender, self.rng, kill_every=kill_every, kills=kills,
                             redis_restart=redis_restart, stop=self.stop, counter=self.counter, progress=self.progress)
        reader = WidgetReader(self.cluster.serve_url, self.seed, self.store_ids, self.signing, self.iframes, self.sender,
                              redis_unsettled=self.cluster.redis_unsettled, stop=self.stop, counter=self.counter,
                              checked=self.scanner.scan_answer, helpdesk_of=self.helpdesk_of)
        self.faults.on.set()
        for name, target in (("sender", self.sender.run), ("chaos_monkey", self.faults.chaos_monkey),
                             ("flip_limit_status", self.faults.flip_limit_status), ("widget_reader", reader.run)):
            thread = threading.Thread(target=target, name=f"chaos-{name}", daemon=True)
            thread.start()
            self.threads.append(thread)
        self._wait_for_sending(fault_seconds)
        self._stop_faults(monkey=self.threads[1])

    def _wait_for_sending(self, fault_seconds: float) -> None:
        """Until every event is out, then ``fault_seconds`` more, unless opcore's records show all done sooner."""
        while time.monotonic() < self.deadline:
            if self.sender.done.is_set():
                break
            time.sleep(0.2)
        sent_at = time.monotonic()
        self._log(f"all events sent after {sent_at - self.started:.1f} s; "
                  f"{self.counter.get('accepted')} accepted, faults go on for up to {fault_seconds:g} s")
        while time.monotonic() < min(self.deadline, sent_at + fault_seconds):
            if work_looks_done(self.cluster.redis, self.claims, self.helpdesk_of):
                break
            time.sleep(0.5)

    def _stop_faults(self, monkey: threading.Thread) -> None:
        """Let the monkey finish its current kill or restart, then leave Redis and both workers up."""
        self.faults.on.clear()
        monkey.join(30)
        self.cluster.redis_up.wait(30)
        for w in self.cluster.dead_workers():
            self.cluster.start_worker(w)
        self.faults_off = time.monotonic()
        cluster, result = self.cluster, self.result
        result.worker_kills, result.worker_starts = cluster.worker_kills, cluster.worker_starts
        result.redis_restarts, result.redis_down_seconds = cluster.redis_restarts, cluster.redis_down_seconds
        self._log(f"faults stopped after {self.faults_off - self.started:.1f} s "
                  f"({result.worker_kills} worker kills, {result.redis_restarts} redis restarts); settling")

    # -- settle -------------------------------------------------------------------------------

    def _queued(self) -> int:
        """Messages left in the queues the settle waits for."""
        return queued_messages(self.cluster.redis)

    def settle(self) -> None:
        """Wait until no message is left anywhere, twice 2 s apart; from then on nothing can change.

        Every queue's message hash being empty includes delayed messages and those held by a dead
        worker, so an empty hash means the system has finished on its own, not merely paused.
        """
        last_report = 0.0
        while time.monotonic() < self.deadline:
            left = self._queued()
            if left == 0:
                time.sleep(2.0)
                if self._queued() == 0:
                    self.result.settled = True
                    break
            if time.monotonic() - last_report > 10:
                last_report = time.monotonic()
                self._log(f"  settling: {left} message(s) still queued")
            time.sleep(0.5)
        self.result.settle_seconds = time.monotonic() - self.faults_off
        self.stop.set()
        for thread in self.threads:
            thread.join(15)

    # -- judge --------------------------------------------------------------------------------

    def judge(self) -> None:
        """Fill in the verdict's figures: from the sandbox, the widget, Redis, and the secret scan of Redis."""
        result, counter, r = self.result, self.counter, self.cluster.redis
        result.events_accepted = counter.get("accepted")
        result.events_duplicate = counter.get("duplicate")
        result.events_failed = counter.get("failed") + counter.get("refused")
        result.send_retries = counter.get("send_retries")
        on = {h: [c for c in self.claims if self.helpdesk_of[c.store_id] == h] for h in ("richpanel", "zendesk")}
        verify_sandbox(self.cluster.control, on["richpanel"], self.api_keys, result, dry=False,
                       accepted_at=self.sender.accepted_at)
        verify_zendesk(self.cluster.zendesk_control, on["zendesk"], self.subdomain_of, result,
                       accepted_at=self.sender.accepted_at)
        judge_notes(self.cluster.control, self.cluster.zendesk_control, self.claims, self.mirror_of, self.api_keys,
                    self.subdomain_of, self.sender.event_accepted_at, result)
        result.ingress_seconds = percentiles(self.sender.ingress_latency)
        judge_redis(r, result, self.claims, self.helpdesk_of)
        check_widget_panels(self.http, self.claims, self.signing, self.iframes, result, self.scanner.scan_answer, self.helpdesk_of)
        result.widget = WidgetReader.figures(counter)
        if result.widget["outage_other"]:
            result.notes.append(f"FINDING: while Redis was down the widget answered {result.widget['outage_other']} "
                                "request(s) with something other than a 503 JSON error (see the widget line)")
        if counter.get("worker_died"):
            result.notes.append(f"{counter.get('worker_died')} worker(s) exited on their own and were restarted")
        scan_redis(r, self.scanner)
        self._judge_metrics()

    def _judge_metrics(self) -> None:
        """The web process's /metrics must count what the workers (other processes) did: per
        helpdesk, tickets created plus tickets adopted equals the tickets its stand-in holds."""
        from prometheus_client.parser import text_string_to_metric_families

        for _ in range(3):  # a thread's first Redis command after the restart meets its dead connection
            answer = self.scanner.scan_answer(self.http.get("/metrics", headers=self.admin), "GET /metrics")
            if answer.status_code != 503:
                break
        if answer.status_code != 200:
            self.result.notes.append(f"FINDING: /metrics answered {answer.status_code}: {answer.text[:200]}")
            self.result.metrics_out_of_step = 2
            return
        held = {"richpanel": self.result.tickets, "zendesk": self.result.zd_tickets}
        counted = dict.fromkeys(held, 0)
        for family in text_string_to_metric_families(answer.text):
            for sample in family.samples:
                if (sample.name == "opcore_deliveries_total" and sample.labels["kind"] == "create"
                        and sample.labels["outcome"] in ("done", "adopted") and sample.labels["plugin"] in counted):
                    counted[sample.labels["plugin"]] += int(sample.value)
        self.result.metrics_tickets = counted
        self.result.metrics_out_of_step = sum(counted[h] != held[h] for h in held)

    def shut_down(self) -> None:
        self.stop.set()
        self.http.close()
        self.cluster.stop()

    def finish(self, *, keep: bool) -> ChaosResult:
        """Scan the files left behind (AOF, logs, cassettes), close the figures, remove a passing run's files."""
        self.scanner.scan_files(self.tmp, ROOT)
        result = self.result
        result.secret_leaks = sorted(set(self.scanner.leaks))
        result.secrets_checked = dict(self.scanner.checked)
        result.wall_seconds = time.monotonic() - self.started
        if not keep and result.ok and not self.workdir:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            result.notes.append(f"logs and AOF kept in {self.tmp}")
        return result


# -- command line -------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """``python bench/chaos.py``: run, print the report, optionally write the figures; exit 1 on failure."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--claims", "-n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stores", type=int, default=None, help="default: max(4, claims // 100)")
    parser.add_argument("--rate", type=float, default=None, help="claims created per second (default 25, 30 above 1000)")
    parser.add_argument("--quota", type=int, default=50, help="requests per key and window, opcore and sandbox")
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=None, help="seconds for the whole run (default: scales with N)")
    parser.add_argument("--heartbeat-ms", type=int, default=10_000)
    # Accepted so older command lines still work; there is no janitor any more (see the docstring).
    parser.add_argument("--no-janitor", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-kills", action="store_true")
    parser.add_argument("--no-redis-restart", action="store_true")
    parser.add_argument("--fault-seconds", type=float, default=15.0, help="faults go on this long after the last event")
    parser.add_argument("--keep", action="store_true", help="keep the logs and the AOF")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    timeout = args.timeout or max(170.0, 300.0 + args.claims / (args.rate or 25.0) * 2.5)
    result = run(args.claims, seed=args.seed, stores=args.stores, rate=args.rate, quota=args.quota,
                 window=args.window, timeout=timeout, heartbeat_ms=args.heartbeat_ms,
                 kills=not args.no_kills, redis_restart=not args.no_redis_restart,
                 fault_seconds_after_send=args.fault_seconds, keep=args.keep,
                 progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(result.report())
    if args.json:
        args.json.write_text(json.dumps(result.as_dict(), indent=2, default=str))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
