"""Failover run: does opcore keep what it acknowledged when its Redis primary dies and a replica takes over?

The chaos run (bench/chaos.py) restarts one Redis in place from its AOF; an operator's Redis
fails over instead: the primary dies, a replica that may lag is promoted, and the address opcore
uses moves to it. Whatever the old primary acknowledged and never sent to the replica is gone.
This run deploys that topology on loopback and measures what the failover costs, judged from the
Richpanel and Zendesk stand-ins (never from opcore's own bookkeeping, which is what may forget):

- a Redis primary and one replica (AOF ``everysec``, no RDB), each replica behind a replication
  link the harness can stall; opcore reaches the primary through a *moving endpoint* (a TCP
  proxy that, when switched, closes every connection and forwards new ones to the new primary,
  as a managed Redis's DNS name does), or through real Sentinels (``--variant sentinel``);
- ``opcore serve``, one ``opcore worker --processes 1 --threads 8`` and both stand-ins, started by
  the chaos harness's own Cluster, with the stand-ins' latency kept and their injected faults off
  (``--helpdesk-faults`` turns them back on): the failover is the fault under test;
- the chaos workload (1,200 claims at 120/s by default, half of them finished), sent by the chaos
  Sender, which redelivers anything not answered 202 or 200, as Order Protection does.

Variants: ``kill`` SIGKILLs the primary when half the deliveries are out, then (after
``--promote-after`` s, a managed service's detection) promotes the replica with
``REPLICAOF NO ONE`` and switches the endpoint; ``stalled`` first stalls the replication link for
``--stall-seconds`` so the replica lags (the lag is read from both nodes' ``INFO replication``)
and kills the primary during the stall; ``sentinel`` lets ``--sentinels`` real Sentinels notice
and promote (opcore then uses ``OPCORE_REDIS_SENTINELS``); ``--no-failover`` is the control. After
each promotion a fresh, empty replica of the new primary starts, as a managed service's would, so
``--replicas 1`` (``OPCORE_REDIS_REPLICAS``) can accept again once it has synced.

    python bench/failover.py --variant stalled --runs 3 --replicas 0 --json out.json

Exit status 1 when a ``--replicas 1`` run lost, duplicated or lost a finish; 2 when a run failed
before it could be judged. The parts: ``_failover_net`` (the proxies), ``_failover_redis`` (the
nodes, the failover's moves, Sentinels), ``_failover_judge`` (acknowledgements, verdict, report).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._chaos_plan import build_plan  # noqa: E402
from bench._chaos_procs import NAMESPACE, QUEUES, Cluster  # noqa: E402
from bench._chaos_traffic import Sender  # noqa: E402
from bench._failover_judge import (  # noqa: E402
    AckLog,
    FailoverResult,
    code_under_test,
    judge_acknowledged,
    lag,
    scan_logs,
    summary,
    where_stuck,
)
from bench._failover_redis import SENTINEL_MASTER, Topology, direct  # noqa: E402
from bench._servers import machine  # noqa: E402
from bench.chaos import _Run  # noqa: E402

VARIANTS = ("kill", "stalled", "sentinel", "none")
#: The sender stops redelivering this long after the plan's last delivery was due: a run whose
#: ingress never recovers must still end (and say so) well within the run's few minutes.
GIVE_UP_SECONDS = 60.0


@dataclass
class Config:
    """What one run does; the command line's options."""

    variant: str = "kill"
    claims: int = 1200
    rate: float = 120.0
    replicas: int = 0
    replica_timeout_ms: int | None = None
    sentinels: int = 1
    promote_after: float = 1.0
    stall_seconds: float = 1.5
    settle_timeout: float = 90.0
    quota: int = 200
    helpdesk_faults: float = 0.0
    keep: bool = False
    code: str = ""  # what code ran (default: this checkout's commit)


class FailoverCluster(Cluster):
    """The chaos Cluster with its Redis taken away: opcore's processes are given the failover
    topology's address instead, there is one worker, and the stand-ins' faults are set by rate.

    Everything else (the stand-ins with their latency, their accounts, the opcore settings the
    chaos run tuned: heartbeat, maintenance chance, quotas, timeouts) is the chaos run's own.
    """

    def __init__(self, tmp: Path, *, redis_env: dict[str, str], primary_port: int, helpdesk_faults: float,
                 **chaos: object) -> None:
        super().__init__(tmp, **chaos)  # type: ignore[arg-type]
        env = self.serve.env  # one dict, shared by serve and the workers
        env.pop("OPCORE_REDIS_URL", None)
        env.update(redis_env)
        self.workers = self.workers[:1]
        self.procs = [self.sandbox, self.zendesk, self.serve, *self.workers]
        self.helpdesk_faults = helpdesk_faults
        self.point_at(primary_port)

    def point_at(self, port: int) -> None:
        """The harness's own client (settle checks, judging) reads the current primary directly."""
        self.redis = direct(port, 5.0)

    def start_redis(self) -> None:
        """The topology is started (and failed over) by the harness, not by the Cluster."""
        self.redis_up.set()

    def start(self, seed: int) -> None:
        super().start(seed)
        rate = self.helpdesk_faults
        self.control.put("/_sandbox/config", json={"error_rate": rate, "rate_limit_rate": rate,
                                                   "drop_rate": rate / 2.5}).raise_for_status()
        self.zendesk_control.put("/_sandbox/config", json={"error_rate": rate,
                                                           "drop_rate": rate / 2.5}).raise_for_status()


class _FailoverRun(_Run):
    """The chaos run's stores, secrets, provisioning, settle and judge, around a failover.

    ``_Run.__init__`` builds the stores, their keys and opcore's secrets, and a plain Cluster that
    is never started; it is swapped here for a FailoverCluster with the same settings, so both
    runs keep one notion of a store, a plan and a verdict.
    """

    def __init__(self, config: Config, index: int, seed: int | None, progress: Callable[[str], None]) -> None:
        super().__init__(config.claims, seed=seed, stores=None, rate=config.rate, quota=config.quota, window=10.0,
                         heartbeat_ms=10_000, timeout=config.settle_timeout, threads=8, workdir=None, progress=progress)
        self.config = config
        self.tmp.rmdir()  # the chaos run's empty directory: this run's files go to one named for it
        self.tmp = Path(tempfile.mkdtemp(prefix="opcore-failover-"))
        self.topology = Topology(self.tmp)
        self.fo = FailoverResult(variant=config.variant, run=index, replicas=config.replicas, claims=config.claims,
                                 rate=config.rate, seed=self.seed, commit=config.code or code_under_test(ROOT), machine=machine(),
                                 started=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), chaos=self.result)
        self.kill_at: float | None = None

    def set_up(self) -> None:
        """The topology (and Sentinels), then the chaos cluster on it; check opcore really uses it."""
        cfg, plain = self.config, self.cluster
        self.topology.start(replica=True)
        env = {"OPCORE_REDIS_REPLICAS": str(cfg.replicas)}
        if cfg.replica_timeout_ms is not None:
            env["OPCORE_REDIS_REPLICA_TIMEOUT_MS"] = str(cfg.replica_timeout_ms)
        if cfg.variant == "sentinel":
            ports = self.topology.start_sentinels(cfg.sentinels)
            env.update(OPCORE_REDIS_SENTINELS=",".join(f"127.0.0.1:{p}" for p in ports),
                       OPCORE_REDIS_SENTINEL_MASTER=SENTINEL_MASTER)
        else:
            env["OPCORE_REDIS_URL"] = self.topology.endpoint_url
        secrets = {k: plain.serve.env[k] for k in ("OPCORE_WEBHOOK_SECRET", "OPCORE_ADMIN_TOKEN", "OPCORE_MASTER_KEY")}
        plain.control.close()
        plain.zendesk_control.close()
        self.cluster = FailoverCluster(
            self.tmp, redis_env=env, primary_port=self.topology.primary.port, helpdesk_faults=cfg.helpdesk_faults,
            api_keys=list(self.api_keys.values()), quota=cfg.quota, window=10.0, heartbeat_ms=10_000, threads=8,
            zendesk_tokens={self.subdomain_of[s]: t for s, t in self.zendesk_tokens.items()}, opcore_settings=secrets)
        self.http.close()
        self.http = httpx.Client(base_url=self.cluster.serve_url, timeout=10, limits=httpx.Limits(max_connections=64))
        self.fo.topology = {"primary": f":{self.topology.primary.port}", "replica": f":{self.topology.replica.port}",
                            "opcore uses": env.get("OPCORE_REDIS_URL") or env["OPCORE_REDIS_SENTINELS"]}
        super().set_up()
        time.sleep(1.0)  # a worker that cannot use this Redis setting exits at once, with one line saying why
        if self.cluster.dead_workers():
            said = (self.tmp / "worker-A.log").read_text(errors="replace").strip().splitlines()[-1:]
            raise RuntimeError(f"the worker exited at start: {said[0] if said else '?'}")
        if not any(True for _ in self.cluster.redis.scan_iter(f"{NAMESPACE}:*", count=1000)):
            raise RuntimeError("opcore wrote nothing to the Redis under test (is this Redis setting supported yet? "
                               "see serve.log); not judging a run on some other store")

    # -- traffic and the failover ---------------------------------------------------------------

    def send_and_fail_over(self) -> None:
        """Send the plan; the failover thread strikes when half the deliveries are out."""
        t0 = time.time() + 1.0
        self.claims, sends = build_plan(self.n, self.store_ids, self.rng, self.run_id, self.rate, t0)
        self.result.events_planned = len(sends)
        self.result.snoozes_expected = sum(c.finished for c in self.claims if self.helpdesk_of[c.store_id] == "richpanel")
        self.acks = AckLog(self.scanner.scan_answer)
        self.sender = Sender(self.http, sends, self.claims, t0=t0, webhook_secret=self.webhook_secret,
                             timeout=self.config.settle_timeout, stop=self.stop, counter=self.counter,
                             checked=self.acks.checked, notes=self.result.notes)
        for name, target in (("sender", self.sender.run), ("failover", self._fail_over),
                             ("supervisor", self._supervise)):
            thread = threading.Thread(target=target, name=f"failover-{name}", daemon=True)
            thread.start()
            self.threads.append(thread)
        give_up = time.monotonic() + sends[-1].at + GIVE_UP_SECONDS
        while not self.sender.done.is_set() and not self.stop.wait(0.2):
            if time.monotonic() > give_up:
                self.result.notes.append(f"FINDING: deliveries still not accepted {GIVE_UP_SECONDS:g} s after the "
                                         "plan's last one; the sender gave up (they count as never accepted)")
                self.stop.set()
        self.sender.done.wait(30)
        self.threads[1].join(60)
        self.faults_off = time.monotonic()
        self.deadline = self.faults_off + self.config.settle_timeout
        self._log(f"all deliveries done after {self.faults_off - self.started:.1f} s; settling")

    def _supervise(self) -> None:
        """Thread body: restart a worker that exited on its own, as systemd or Kubernetes would, and count it."""
        while not self.stop.wait(0.5):
            for worker in self.cluster.dead_workers():
                self.counter.add("worker_died")
                self.cluster.start_worker(worker)

    def _wait_delivered(self, count: int) -> bool:
        while self.sender.delivered.get("done") < count:
            if self.stop.wait(0.02) or self.sender.done.is_set():
                return False
        return True

    def _fail_over(self) -> None:
        """Thread body: the variant's moves, each one timed; a failure here is kept, not raised."""
        try:
            self._moves()
        except Exception as exc:  # noqa: BLE001 - the run goes on and reports it
            self.fo.error = f"the failover failed: {exc!r}"
            self.result.notes.append(traceback.format_exc())

    def _moves(self) -> None:
        cfg, topo, tl = self.config, self.topology, self.fo.timeline
        half = len(self.sender.sends) // 2
        per_second = len(self.sender.sends) * self.rate / self.n
        stalled = cfg.variant == "stalled"
        start = half - int(per_second * cfg.stall_seconds) if stalled else half
        if not self._wait_delivered(max(1, start)):
            return
        samples = [topo.offsets()]
        if cfg.variant == "none":
            self.fo.lag = lag(samples)
            return
        if stalled:
            stall_at = time.time()
            topo.net.stall(topo.replica.link)
            while time.time() - stall_at < cfg.stall_seconds:
                time.sleep(0.1)
                samples.append(topo.offsets())
        sizes = (topo.dbsize(topo.primary), topo.dbsize(topo.replica))
        self.kill_at = topo.kill_primary()
        old_port = topo.primary.port
        if stalled:
            tl["stall began"] = stall_at - self.kill_at
            topo.net.sever(topo.replica.link)  # what it held is never delivered: the replica lags for good
        replica_has = topo.offsets()["replica"]
        self._log(f"primary :{old_port} killed with {self.sender.delivered.get('done')} deliveries done")
        if cfg.variant == "sentinel":
            promoted = topo.wait_sentinel_promotion(old_port)
            if promoted is None:
                raise RuntimeError("the Sentinels promoted no replica within 30 s")
            tl["promoted (Sentinel)"] = promoted - self.kill_at
        else:
            time.sleep(cfg.promote_after)
            tl["promoted"] = topo.promote() - self.kill_at
            switched, closed = topo.switch_endpoint()
            tl["endpoint switched"] = switched - self.kill_at
            self.fo.topology["connections closed by the switch"] = closed
        self.cluster.point_at(topo.primary.port)
        self.fo.lag = {**lag(samples), "replica offset at promotion": replica_has,
                       "bytes the replica never got": max(0, samples[-1]["primary"] - replica_has),
                       "keys primary/replica at the kill": f"{sizes[0]}/{sizes[1]}"}
        fresh = topo.fresh_replica()
        tl["fresh replica in sync"] = topo.wait_synced(fresh) - self.kill_at
        self.fo.topology.update({"new primary": f":{topo.primary.port}", "fresh replica": f":{fresh.port}"})

    # -- settling -------------------------------------------------------------------------------

    def _queued(self) -> int:
        """Messages in every queue's message hash, found by name (``opcore.bulk`` too, which the
        chaos run's QUEUES does not list); -1 while the primary does not answer."""
        try:
            r = self.cluster.redis
            keys = [k for k in r.scan_iter(f"{NAMESPACE}:dramatiq:*.msgs", count=1000) if not k.endswith(b".XQ.msgs")]
            return sum(int(r.hlen(k)) for k in keys)
        except redis.RedisError:
            return -1

    # -- judging --------------------------------------------------------------------------------

    def judge(self) -> None:
        """The chaos judge's checks, then the failover's: acknowledged work against the stand-ins."""
        super().judge()
        fo, acks = self.fo, self.acks
        statuses = acks.statuses()
        fo.sender = {"statuses": statuses, "connection_errors": max(0, self.result.send_retries - sum(
            n for s, n in statuses.items() if int(s) >= 500))}
        if self.kill_at is not None:
            promoted = self.kill_at + (fo.timeline.get("promoted") or fo.timeline.get("promoted (Sentinel)") or 0)
            fo.sender["accepted_without_primary"] = acks.accepted_between(self.kill_at + 0.2, promoted)
            fo.timeline["first 202"] = acks.first_202_after(self.kill_at)
            fo.timeline["last non-2xx"] = acks.last_error_after(self.kill_at)
        self.result.left_in_queues = max(0, self._queued())  # opcore.bulk included
        if not self.result.settled:
            fo.stuck = where_stuck(self.cluster.redis, NAMESPACE, QUEUES, 10_000)
        fo.judged = judge_acknowledged(self.claims, self.helpdesk_of, self.api_keys, self.subdomain_of,
                                       self.cluster.control, self.cluster.zendesk_control, acks, self.kill_at)
        late = None
        if self.kill_at is not None:
            late = self.kill_at + (fo.timeline.get("promoted") or fo.timeline.get("promoted (Sentinel)") or 0) + 5.0
        fo.logs = scan_logs(self.tmp, ["serve", "worker-A"], late)

    def shut_down(self) -> None:
        super().shut_down()
        self.topology.stop()

    def close(self) -> FailoverResult:
        """Scan the logs for secrets, keep the files of a run that lost anything (or ``--keep``)."""
        self.scanner.scan_files(self.tmp, ROOT)
        self.result.secret_leaks = sorted(set(self.scanner.leaks))
        self.result.secrets_checked = dict(self.scanner.checked)
        self.result.wall_seconds = time.monotonic() - self.started
        if self.config.keep or not self.fo.clean or not self.result.ok:
            self.fo.kept = str(self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return self.fo


def run(config: Config, index: int = 1, seed: int | None = None,
        progress: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> FailoverResult:
    """One failover run (see the module docstring); errors are kept in the result, not raised."""
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is not installed")
    fo = _FailoverRun(config, index, seed, progress)
    try:
        fo.set_up()
        fo.send_and_fail_over()
        fo.settle()
        fo.judge()
    except Exception as exc:  # noqa: BLE001 - one failed run must not hide the others
        fo.fo.error = fo.fo.error or f"{type(exc).__name__}: {exc}"
        fo.result.notes.append(traceback.format_exc())
    finally:
        fo.shut_down()
    return fo.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=VARIANTS[:3], default="kill")
    parser.add_argument("--no-failover", action="store_true", help="the control: the same run, nothing killed")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--replicas", type=int, choices=(0, 1), default=0, help="OPCORE_REDIS_REPLICAS for opcore")
    parser.add_argument("--replica-timeout-ms", type=int, default=None, help="OPCORE_REDIS_REPLICA_TIMEOUT_MS")
    parser.add_argument("--claims", type=int, default=1200)
    parser.add_argument("--rate", type=float, default=120.0, help="claims created per second")
    parser.add_argument("--seed", type=int, default=None, help="the first run's seed (the next runs add 1 each)")
    parser.add_argument("--sentinels", type=int, choices=(1, 3), default=1)
    parser.add_argument("--promote-after", type=float, default=1.0, help="s from the kill to the promotion")
    parser.add_argument("--stall-seconds", type=float, default=1.5)
    parser.add_argument("--settle-timeout", type=float, default=90.0)
    parser.add_argument("--quota", type=int, default=200, help="Richpanel requests per key and 10 s window")
    parser.add_argument("--helpdesk-faults", type=float, default=0.0, help="the stand-ins' 500 and rate-limit rate")
    parser.add_argument("--keep", action="store_true", help="keep every run's logs and AOFs")
    parser.add_argument("--code", default="", help="names the code under test in the report (default: git HEAD, "
                        "+dirty if the work tree has changes); for an exported tree, say which commit it is")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    config = Config(variant="none" if args.no_failover else args.variant, claims=args.claims, rate=args.rate,
                    replicas=args.replicas, replica_timeout_ms=args.replica_timeout_ms, sentinels=args.sentinels,
                    promote_after=args.promote_after, stall_seconds=args.stall_seconds,
                    settle_timeout=args.settle_timeout, quota=args.quota, helpdesk_faults=args.helpdesk_faults,
                    keep=args.keep, code=args.code)
    results = []
    for i in range(args.runs):
        result = run(config, i + 1, None if args.seed is None else args.seed + i)
        print(result.report(), flush=True)
        results.append(result)
        if args.json:
            args.json.write_text(json.dumps([r.as_dict() for r in results], indent=2, default=str))
    print(summary(results))
    if any(r.error for r in results):
        return 2
    return 1 if any(r.replicas == 1 and not r.clean for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
