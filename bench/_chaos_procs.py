"""The chaos run's processes: a private Redis, the faulty Richpanel and Zendesk sandboxes, ``opcore serve``,
two workers.

Everything runs as a real child process on loopback, as in production, so a SIGKILL here is
what a crash is there. Processes are only ever signalled by the pid we started them with; the
shared Redis and anything else on the machine are never touched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import redis

from bench._servers import free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent
#: The OPCORE_NAMESPACE of the run: every key opcore writes starts with it.
NAMESPACE = "opcore"
DASHBOARD = "https://app.orderprotection.com"
#: Dramatiq's queues for opcore's and the helpdesk plugins' actors, with their delay queues.
QUEUES = ("opcore", "opcore.DQ", "richpanel", "richpanel.DQ", "zendesk", "zendesk.DQ")
#: The Zendesk agent of every chaos account.
ZENDESK_EMAIL = "agent@chaos.test"
#: Out of a million broker commands, how many also run queue maintenance (10%, against Dramatiq's
#: 0.1%): a killed worker's messages come back seconds after its heartbeat times out, not minutes.
MAINTENANCE_CHANCE = 100_000


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
        """SIGKILL: a crash, with no chance to ack, release a lock or say goodbye."""
        if self.alive:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
        if not self.alive:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


def process_env(extra: dict[str, str]) -> dict[str, str]:
    """Our environment without any OPCORE_ setting of the caller's (never the shared Redis), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPCORE_")}
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def opcore_cmd(*args: str) -> list[str]:
    """The ``opcore`` command line, run from this checkout with this interpreter."""
    return [sys.executable, str(ROOT / "runner.py"), *args]


class Cluster:
    """Every process of one run, on free ports, with its logs and the AOF in ``tmp``.

    It also counts what it did to them (worker starts and kills, Redis restarts and downtime),
    and tells the widget reader when Redis is away, so a 5xx then is judged as an outage answer.
    """

    def __init__(self, tmp: Path, *, api_keys: list[str], zendesk_tokens: dict[str, str],
                 opcore_settings: dict[str, str], quota: int, window: float, heartbeat_ms: int, threads: int) -> None:
        self.redis_port, self.sandbox_port, self.serve_port = free_port(), free_port(), free_port()
        self.zendesk_port = free_port()
        self.zendesk_url = f"http://127.0.0.1:{self.zendesk_port}"
        #: subdomain -> API token; each account's budget is twice the Richpanel quota a window, 30%
        #: of it spent by the merchant's other apps.
        self.zendesk_tokens, self.zendesk_plan, self.window = zendesk_tokens, 2 * quota, window
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.sandbox_url = f"http://127.0.0.1:{self.sandbox_port}"
        self.serve_url = f"http://127.0.0.1:{self.serve_port}"
        self.redis_proc = Proc("redis", ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                         "--dir", str(tmp), "--appendonly", "yes", "--appendfsync", "always",
                                         "--save", "", "--daemonize", "no", "--protected-mode", "yes"],
                               process_env({}), tmp / "redis.log")
        sandbox_args = ["richpanel-sandbox", "--port", str(self.sandbox_port), "--quota", str(quota),
                        "--window", str(window), "--latency-ms", "20", "200", "--error-rate", "0.05",
                        "--rate-limit-rate", "0.05", "--retry-after-form", "mixed", "--drop-rate", "0.02"]
        for key in api_keys:
            sandbox_args += ["--account", key]
        self.sandbox = Proc("sandbox", opcore_cmd(*sandbox_args), process_env({}), tmp / "sandbox.log")
        self.zendesk = Proc("zendesk", opcore_cmd("zendesk-sandbox", "--port", str(self.zendesk_port),
                                                  "--error-rate", "0.05", "--drop-rate", "0.02", "--other-apps", "0.3"),
                            process_env({}), tmp / "zendesk.log")
        env = process_env({
            **opcore_settings, "OPCORE_REDIS_URL": self.redis_url, "OPCORE_NAMESPACE": NAMESPACE,
            "OPCORE_DASHBOARD_URL": DASHBOARD, "OPCORE_HEARTBEAT_TIMEOUT_MS": str(heartbeat_ms),
            "OPCORE_BROKER_MAINTENANCE_CHANCE": str(MAINTENANCE_CHANCE),
            "OPCORE_RICHPANEL_API_URL": self.sandbox_url, "OPCORE_RICHPANEL_QUOTA": str(quota),
            "OPCORE_RICHPANEL_WINDOW_SECONDS": str(window), "OPCORE_RICHPANEL_TIMEOUT_SECONDS": "5",
            "OPCORE_ZENDESK_API_URL": self.zendesk_url + "/{subdomain}", "OPCORE_ZENDESK_WINDOW_SECONDS": str(window),
            "OPCORE_ZENDESK_TIMEOUT_SECONDS": "5",
        })
        self.serve = Proc("serve", opcore_cmd("--log-level", "INFO", "serve", "--port", str(self.serve_port)),
                          env, tmp / "serve.log")
        self.workers = [Proc(f"worker-{w}", opcore_cmd("--log-level", "INFO", "worker", "--processes", "1",
                                                       "--threads", str(threads)), env, tmp / f"worker-{w}.log")
                        for w in "AB"]
        self.procs = [self.redis_proc, self.sandbox, self.zendesk, self.serve, *self.workers]
        #: The harness's own client: settle checks, judging and the secret scan read through it.
        self.redis = redis.Redis.from_url(self.redis_url, socket_timeout=5, socket_connect_timeout=2)
        #: The sandbox's control API (configuration, tickets, request log).
        self.control = httpx.Client(base_url=self.sandbox_url, timeout=30)
        self.zendesk_control = httpx.Client(base_url=self.zendesk_url, timeout=30)
        self.redis_up = threading.Event()
        self._redis_lock = threading.Lock()
        self._redis_back = 0.0  # monotonic time Redis last came back
        self.worker_starts = self.worker_kills = self.redis_restarts = 0
        self.redis_down_seconds = 0.0

    def start(self, seed: int) -> None:
        """Redis, the sandbox (its fault RNG seeded with ``seed``), serve, then both workers."""
        self.start_redis()
        self.sandbox.start()
        wait_port(self.sandbox_port, 30)
        self.control.put("/_sandbox/config", json={"seed": seed}).raise_for_status()
        self.zendesk.start()
        wait_port(self.zendesk_port, 30)
        self.zendesk_control.put("/_sandbox/config", json={"seed": seed, "window": self.window}).raise_for_status()
        for subdomain, token in self.zendesk_tokens.items():
            self.zendesk_control.post("/_sandbox/accounts", json={
                "subdomain": subdomain, "email": ZENDESK_EMAIL, "api_token": token, "plan": self.zendesk_plan,
            }).raise_for_status()
        self.serve.start()
        wait_port(self.serve_port, 30)
        for w in self.workers:
            self.start_worker(w)

    def start_redis(self) -> None:
        """Start Redis and wait until it answers PING (it answers LOADING while it replays the AOF)."""
        self.redis_proc.start()
        wait_port(self.redis_port, 20)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if self.redis.ping():
                    break
            except redis.RedisError:
                time.sleep(0.05)
        self.redis_up.set()

    def restart_redis(self) -> None:
        """SIGKILL Redis, leave it down 1.5 s (the ingress answers 503 meanwhile), restart it from its AOF."""
        with self._redis_lock:
            self.redis_up.clear()
            down = time.monotonic()
            self.redis_proc.kill()
            time.sleep(1.5)
            self.start_redis()
            self._redis_back = time.monotonic()
            self.redis_down_seconds = time.monotonic() - down
            self.redis_restarts += 1

    def redis_unsettled(self, grace: float = 2.0) -> bool:
        """Whether Redis is down or came back less than ``grace`` seconds ago (clients still reconnecting)."""
        return not self.redis_up.is_set() or time.monotonic() - self._redis_back < grace

    def start_worker(self, worker: Proc) -> None:
        worker.start()
        self.worker_starts += 1

    def kill_worker(self, worker: Proc) -> None:
        worker.kill()
        self.worker_kills += 1

    def dead_workers(self) -> list[Proc]:
        return [w for w in self.workers if not w.alive]

    def stop(self) -> None:
        """Everything but Redis first (so nothing is left writing to it), then Redis; close our clients."""
        for p in reversed(self.procs):
            if p is not self.redis_proc:
                p.stop()
        try:
            self.redis.close()
        except Exception:  # noqa: BLE001
            pass
        self.redis_proc.stop()
        self.control.close()
        self.zendesk_control.close()
