"""The whole opcore stack as real processes on loopback, for the delivery benchmarks.

``stack()`` flushes the benchmark's Redis database, then starts, each as its own process:

- the Richpanel sandbox (``plugins.richpanel.sandbox:create_sandbox`` under uvicorn, without
  access logs, so neither opcore nor a yardstick pays for a log line per request), configured
  through its control API (``PUT /_sandbox/config``, ``POST /_sandbox/accounts``);
- ``opcore worker --processes 1 --threads N`` (waited for: its heartbeat appears in Redis);
- ``opcore serve`` (the web tier only, since ``OPCORE_REDIS_URL`` is set).

Every process writes its output to a log file in a temporary directory (never to an unread
pipe, which would block a chatty process); when one dies, its last lines are shown. Every
wait has a deadline. Helpers here build claims, post them, and read the sandbox's records,
which are the benchmarks' source of truth (the sandbox stamps each request with
``time.time()`` once it has been handled, i.e. once the ticket exists).
"""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import ROOT, free_port, machine, wait_port  # noqa: E402,F401

from opcore_hooks.crypto import generate_master_key  # noqa: E402
from opcore_hooks.testing import claim_created  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/13"
SECRET = "bench-webhook-secret"
ADMIN = "bench-admin-token"
NAMESPACE = "opcore"
CLAIM_LINK = re.compile(r"/claims/view/([A-Za-z0-9_.\-]+)")
LIMIT_STATUSES = (429, 492)


class BenchError(RuntimeError):
    pass


# -- processes -------------------------------------------------------------------------------

@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def cpu_seconds(self) -> float:
        """User plus system CPU the process has used so far (Linux /proc)."""
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def check(self) -> None:
        if self.popen.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}")


@contextmanager
def proc(name: str, args: list[str], logdir: Path, *, env: dict[str, str] | None = None,
         port: int | None = None, stop_timeout: float = 20.0) -> Iterator[Proc]:
    log = logdir / f"{name}.log"
    base = {k: v for k, v in os.environ.items() if not k.startswith("OPCORE_")}
    with open(log, "wb") as out:
        popen = subprocess.Popen(args, cwd=ROOT, env={**base, **(env or {})}, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    p = Proc(name, popen, log)
    try:
        if port is not None:
            deadline = time.monotonic() + 30
            while True:
                p.check()
                try:
                    wait_port(port, timeout=0.5)
                    break
                except RuntimeError:
                    if time.monotonic() > deadline:
                        raise BenchError(f"{name} does not listen on {port}:\n{p.tail()}") from None
        yield p
    finally:
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(stop_timeout)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(5)


#: Run ``opcore serve``/``worker`` from another checkout (e.g. a scratch copy with a change to
#: compare): its ``runner.py`` puts that checkout first on sys.path.
CODE = Path(os.environ.get("BENCH_OPCORE_CODE") or ROOT)


def opcore_cmd(*args: str, log_level: str = "WARNING") -> list[str]:
    return [sys.executable, str(CODE / "runner.py"), "--log-level", log_level, *args]


# -- the stack -------------------------------------------------------------------------------

@dataclass
class Stack:
    redis_url: str
    redis: redis.Redis
    sandbox_url: str
    opcore_url: str
    env: dict[str, str]
    logdir: Path
    procs: list[Proc] = field(default_factory=list)
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))

    # sandbox control
    def sandbox_config(self, **changes: Any) -> dict[str, Any]:
        r = self.http.put(f"{self.sandbox_url}/_sandbox/config", json=changes)
        r.raise_for_status()
        return r.json()

    def add_account(self, api_key: str) -> None:
        self.http.post(f"{self.sandbox_url}/_sandbox/accounts", json={"api_key": api_key}).raise_for_status()

    def sandbox_requests(self) -> list[dict[str, Any]]:
        r = self.http.get(f"{self.sandbox_url}/_sandbox/requests", timeout=120)
        r.raise_for_status()
        return r.json()["requests"]

    def sandbox_tickets(self) -> dict[str, list[dict[str, Any]]]:
        r = self.http.get(f"{self.sandbox_url}/_sandbox/tickets", timeout=120)
        r.raise_for_status()
        return {a["account"]: a["tickets"] for a in r.json()["accounts"]}

    # opcore
    def connect_store(self, store_id: str, api_key: str) -> None:
        """Register the key on the sandbox and save it for the store (one GET /v1/teams)."""
        self.add_account(api_key)
        r = self.http.put(f"{self.opcore_url}/internal/integrations/richpanel/stores/{store_id}",
                          headers={"Authorization": f"Bearer {ADMIN}"},
                          json={"api_key": api_key, "default_channel": "email"})
        if r.status_code != 200:
            raise BenchError(f"configuring store {store_id}: {r.status_code} {r.text}")

    def stats(self) -> dict[str, int]:
        raw = self.redis.hgetall(f"{NAMESPACE}:richpanel:stats")
        return {k.decode(): int(v) for k, v in raw.items()}

    def stat(self, name: str) -> int:
        return int(self.redis.hget(f"{NAMESPACE}:richpanel:stats", name) or 0)

    def queue_lengths(self) -> dict[str, int]:
        """Every Dramatiq queue (list) and message hash (``.msgs``) of opcore's broker, by name."""
        prefix = f"{NAMESPACE}:dramatiq:"
        out = {}
        for raw in sorted(self.redis.scan_iter(match=prefix + "*", count=1000)):
            name, kind = raw.decode()[len(prefix):], self.redis.type(raw)
            if kind == b"list":
                out[name] = self.redis.llen(raw)
            elif kind == b"hash" and name.endswith(".msgs"):
                out[name] = self.redis.hlen(raw)
        return out

    def check(self) -> None:
        for p in self.procs:
            p.check()

    def post_event(self, client: httpx.Client, event: dict[str, Any]) -> float:
        """Post one event; returns the wall-clock time just before sending."""
        body = json.dumps(event).encode()
        t = time.time()
        r = client.post(f"{self.opcore_url}/webhooks/orderprotection", content=body,
                        headers={"x-webhook-secret": SECRET, "content-type": "application/json"})
        if r.status_code != 202:
            raise BenchError(f"ingress answered {r.status_code}: {r.text[:200]}")
        return t

    def wait_stat(self, name: str, target: int, deadline: float, poll: float = 0.05) -> int:
        """Poll the delivery stat until it reaches ``target`` or the deadline passes."""
        value = self.stat(name)
        while value < target and time.monotonic() < deadline:
            self.check()
            time.sleep(poll)
            value = self.stat(name)
        return value


@contextmanager
def stack(redis_url: str = REDIS_URL, *, sandbox_quota: int | None, sandbox_window: float = 30.0,
          opcore_quota: int, opcore_window: float, threads: int = 8, processes: int = 1,
          extra_env: dict[str, str] | None = None) -> Iterator[Stack]:
    # `timeout` and friends send SIGTERM: unwind so every process started here is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    logdir = Path(tempfile.mkdtemp(prefix="opcore-bench-"))
    sandbox_port, opcore_port = free_port(), free_port()
    sandbox_url = f"http://127.0.0.1:{sandbox_port}"
    env = {"OPCORE_REDIS_URL": redis_url, "OPCORE_WEBHOOK_SECRET": SECRET, "OPCORE_ADMIN_TOKEN": ADMIN,
           "OPCORE_MASTER_KEY": generate_master_key(), "OPCORE_RICHPANEL_API_URL": sandbox_url,
           "OPCORE_RICHPANEL_QUOTA": str(opcore_quota), "OPCORE_RICHPANEL_WINDOW_SECONDS": repr(opcore_window),
           **(extra_env or {})}
    with ExitStack() as stack_:
        sandbox = stack_.enter_context(proc(
            "sandbox", [sys.executable, "-m", "uvicorn", "plugins.richpanel.sandbox:create_sandbox", "--factory",
                        "--port", str(sandbox_port), "--log-level", "warning", "--no-access-log",
                        "--lifespan", "off"], logdir, port=sandbox_port))
        st = Stack(redis_url, client, sandbox_url, f"http://127.0.0.1:{opcore_port}", env, logdir, [sandbox])
        stack_.callback(st.http.close)
        st.sandbox_config(quota=sandbox_quota, window=sandbox_window)
        worker = stack_.enter_context(proc(
            "worker", opcore_cmd("worker", "--processes", str(processes), "--threads", str(threads)), logdir, env=env))
        st.procs.append(worker)
        deadline = time.monotonic() + 30
        while not client.zcard(f"{NAMESPACE}:dramatiq:__heartbeats__"):
            worker.check()
            if time.monotonic() > deadline:
                raise BenchError(f"the worker did not start fetching within 30 s:\n{worker.tail()}")
            time.sleep(0.05)
        st.procs.append(stack_.enter_context(proc(
            "serve", opcore_cmd("serve", "--port", str(opcore_port)), logdir, env=env, port=opcore_port)))
        try:
            yield st
        finally:
            for p in st.procs:
                if p.popen.poll() is not None:
                    print(f"[{p.name} had exited: {p.popen.returncode}]\n{p.tail()}", file=sys.stderr)
    client.flushdb()
    client.close()


# -- claims ----------------------------------------------------------------------------------

def run_id() -> str:
    return uuid.uuid4().hex[:6]


def claim_event(store_id: str, claim_id: str, i: int) -> dict[str, Any]:
    """A claim.created envelope like the CONTRACT's example, with its own claim and customer."""
    return claim_created(store_id=store_id, claim_id=claim_id, claim_number=f"OP-{i}",
                         customer={"email": f"customer{i}@example.com", "first_name": "Ana",
                                   "last_name": "Lima", "phone": "+15551230000"})


def api_key(tag: str) -> str:
    """Keys whose masked form (rp_… + last 4) tells them apart in the sandbox's records."""
    return f"rp_bench_{uuid.uuid4().hex[:16]}{tag[-4:]:_>4}"


def masked(key: str) -> str:
    return f"rp_…{key[-4:]}"


def _post_all(host: str, port: int, bodies: list[bytes], concurrency: int, deadline: float,
              rate: float | None = None) -> tuple[list[int], list[float]]:
    """Post every body over ``concurrency`` persistent http.client connections, one thread each;
    the statuses, and each body's wall-clock time just before it was sent.

    With ``rate``, body i is not sent before ``i / rate`` seconds after the start (an open loop).
    http.client rather than httpx's async client: the latter spent ~6 ms of CPU per request
    here, enough to slow the very pipeline being measured on a 2-core machine.
    """
    statuses: list[int] = [0] * len(bodies)
    sent: list[float] = [0.0] * len(bodies)
    lock = threading.Lock()
    cursor = iter(range(len(bodies)))
    headers = {"x-webhook-secret": SECRET, "content-type": "application/json"}
    start = time.monotonic()

    def one() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        try:
            while time.monotonic() < deadline:
                with lock:
                    i = next(cursor, None)
                if i is None:
                    return
                if rate is not None and (wait := start + i / rate - time.monotonic()) > 0:
                    time.sleep(wait)
                sent[i] = time.time()
                conn.request("POST", "/webhooks/orderprotection", body=bodies[i], headers=headers)
                answer = conn.getresponse()
                answer.read()
                statuses[i] = answer.status
        finally:
            conn.close()

    threads = [threading.Thread(target=one, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + 1)
    return statuses, sent


def post_burst(st: Stack, events: list[dict[str, Any]], concurrency: int = 16,
               timeout: float = 120.0) -> tuple[float, float]:
    """Post every event as fast as ``concurrency`` connections allow; (start, end) wall clock."""
    start = time.time()
    post_each(st, events, concurrency, timeout)
    return start, time.time()


def post_each(st: Stack, events: list[dict[str, Any]], concurrency: int = 16, timeout: float = 120.0,
              rate: float | None = None) -> list[float]:
    """Post every event (at most ``rate`` a second when given); each one's wall-clock send time."""
    bodies = [json.dumps(e).encode() for e in events]
    url = httpx.URL(st.opcore_url)
    statuses, sent = _post_all(url.host, url.port, bodies, concurrency, time.monotonic() + timeout, rate)
    bad = [s for s in statuses if s != 202]
    if bad:
        raise BenchError(f"{len(bad)} of {len(events)} posts were not accepted: {sorted(set(bad))}")
    return sent


# -- reading the sandbox's records -------------------------------------------------------------

def ticket_posts(requests: list[dict[str, Any]], key: str | None = None) -> list[dict[str, Any]]:
    """Successful POST /v1/tickets of one key (masked) or all, oldest first."""
    return [r for r in requests if r["method"] == "POST" and r["path"] == "/v1/tickets" and r["status"] == 200
            and (key is None or r["account"] == masked(key))]


def api_calls(requests: list[dict[str, Any]], key: str, since: float = 0.0) -> list[dict[str, Any]]:
    return [r for r in requests if r["path"].startswith("/v1/") and r["account"] == masked(key) and r["time"] >= since]


def claim_of(request: dict[str, Any]) -> str | None:
    body = request.get("body") or {}
    comment = (body.get("ticket") or {}).get("comment") or {}
    m = CLAIM_LINK.search(comment.get("body") or "")
    return m.group(1) if m else None


def ticket_times(requests: list[dict[str, Any]], key: str | None = None) -> dict[str, list[float]]:
    """claim id -> times of the successful ticket creations carrying its link."""
    found: dict[str, list[float]] = {}
    for r in ticket_posts(requests, key):
        claim = claim_of(r)
        if claim:
            found.setdefault(claim, []).append(r["time"])
    return found


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (p99 of fewer than 100 samples is the largest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def describe(values_s: list[float]) -> str:
    ms = [v * 1000 for v in values_s]
    return (f"n={len(ms)}  p50 {percentile(ms, 50):7.1f} ms  p90 {percentile(ms, 90):7.1f} ms  "
            f"p99 {percentile(ms, 99):7.1f} ms  max {max(ms):7.1f} ms  mean {sum(ms) / len(ms):7.1f} ms")


def header(title: str, params: dict[str, Any]) -> None:
    print(f"== {title}")
    print(f"machine: {machine()}")
    print("parameters: " + ", ".join(f"{k}={v}" for k, v in params.items()))
    if CODE != ROOT:
        print(f"opcore processes run from {CODE} (BENCH_OPCORE_CODE), not {ROOT}")
