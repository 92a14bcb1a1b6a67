"""Tickets per second end to end, beside a plain sequential POST loop to the same sandbox.

opcore: N claim.created events are posted to ``opcore serve``'s ingress as fast as 16
connections allow; they go through Redis (db 13 by default, flushed first) to ONE
``opcore worker`` process (8 threads), which opens one ticket per claim on the sandbox. The
clock runs from the first POST to the moment the sandbox holds the N-th ticket (the sandbox's
own timestamp of that request). Neither the sandbox (quota off) nor opcore's pacing
(OPCORE_RICHPANEL_QUOTA=1000000) limits anything, so this is the pipeline's own throughput.

Yardstick: one httpx client, one connection, POSTing the very same ticket body to the same
sandbox process's ``POST /v1/tickets`` in a sequential loop, N times; run before and after the
opcore run (on another key), and the ratio uses their mean. Target: ratio >= 0.5.

Everything runs as separate processes on loopback; every wait has a deadline.

    python bench/pipeline.py [--claims 2000] [--redis-url redis://127.0.0.1:6379/13] [--threads 8]
    python bench/pipeline.py --pair --replicas 1

``--pair`` runs it on a private primary and replica (never the shared Redis); ``--replicas N``
sets OPCORE_REDIS_REPLICAS for opcore's processes (docs/BENCHMARKS.md compares 0 with 1).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _opcore import (  # noqa: E402
    REDIS_URL,
    BenchError,
    api_key,
    claim_event,
    header,
    post_burst,
    run_id,
    stack,
    ticket_posts,
    ticket_times,
)

from opcore_hooks import ClaimCreated  # noqa: E402
from opcore_hooks.config import Settings  # noqa: E402
from opcore_hooks.testing import RedisPair  # noqa: E402
from plugins.richpanel.client import KEY_HEADER  # noqa: E402
from plugins.richpanel.tickets import build_ticket  # noqa: E402


def yardstick(url: str, key: str, claims: int) -> float:
    """Tickets per second of a sequential POST loop on one connection."""
    event = claim_event("yardstick", "yardstick-claim", 0)
    claim = ClaimCreated.model_validate(event["body"])
    body = {"ticket": build_ticket(claim, Settings(_env_file=None).claim_url(claim.claim_id))}
    with httpx.Client(base_url=url, headers={KEY_HEADER: key}, timeout=30) as client:
        for _ in range(20):  # warm-up: connection, imports
            client.post("/v1/tickets", json=body).raise_for_status()
        deadline = time.monotonic() + 120
        start = time.perf_counter()
        for _ in range(claims):
            client.post("/v1/tickets", json=body).raise_for_status()
            if time.monotonic() > deadline:
                raise BenchError("the yardstick loop ran past its deadline")
        return claims / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--claims", type=int, default=2000)
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--threads", type=int, default=8, help="worker threads of the one worker process")
    parser.add_argument("--concurrency", type=int, default=16, help="connections posting to the ingress")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds allowed for the opcore run")
    parser.add_argument("--pair", action="store_true", help="a private primary and replica instead of --redis-url")
    parser.add_argument("--replicas", type=int, default=0, help="OPCORE_REDIS_REPLICAS for opcore's processes")
    args = parser.parse_args()
    if args.pair:
        with tempfile.TemporaryDirectory(prefix="opcore-pipeline-pair-") as tmp:
            pair = RedisPair(Path(tmp))
            try:
                args.redis_url = pair.url
                run(args)
            finally:
                pair.stop()
    else:
        run(args)


def run(args: argparse.Namespace) -> None:
    n, rid = args.claims, run_id()
    header("pipeline: tickets per second end to end", {
        "claims": n, "worker": f"1 process x {args.threads} threads", "ingress": "1 opcore serve process",
        "posting": f"{args.concurrency} connections", "sandbox quota": "off",
        "OPCORE_RICHPANEL_QUOTA": "1000000 per 30 s", "redis": args.redis_url,
        "OPCORE_REDIS_REPLICAS": args.replicas})

    with stack(args.redis_url, sandbox_quota=None, opcore_quota=1_000_000, opcore_window=30.0,
               threads=args.threads, extra_env={"OPCORE_REDIS_REPLICAS": str(args.replicas)}) as st:
        yard_key, key = api_key("yard"), api_key("opcr")
        st.add_account(yard_key)
        before = yardstick(st.sandbox_url, yard_key, n)

        st.connect_store("store_pipe", key)
        warm = [claim_event("store_pipe", f"warm-{rid}-{i}", i) for i in range(20)]
        post_burst(st, warm, concurrency=4)
        if st.wait_stat("tickets", len(warm), time.monotonic() + 30) < len(warm):
            raise BenchError("the warm-up claims did not become tickets within 30 s")
        time.sleep(0.5)

        events = [claim_event("store_pipe", f"pipe-{rid}-{i}", i) for i in range(n)]
        cpu_before = {p.name: p.cpu_seconds() for p in st.procs}
        first_post, last_post = post_burst(st, events, concurrency=args.concurrency)
        done = st.wait_stat("tickets", len(warm) + n, time.monotonic() + args.timeout)
        cpu = {p.name: (p.cpu_seconds() - cpu_before[p.name]) / n * 1000 for p in st.procs}
        stats = st.stats()
        after = yardstick(st.sandbox_url, yard_key, n)

        requests = st.sandbox_requests()
        times = ticket_times(requests, key)
        mine = {c: t for c, t in times.items() if c.startswith(f"pipe-{rid}-")}
        duplicates = sum(len(t) - 1 for t in mine.values())
        if len(mine) < n:
            print(f"!! only {len(mine)} of {n} tickets within {args.timeout:.0f} s (stat: {done - len(warm)})")
        last_ticket = max(max(t) for t in mine.values())
        first_ticket = min(min(t) for t in mine.values())
        elapsed = last_ticket - first_post
        rate = len(mine) / elapsed
        yard = (before + after) / 2
        limited = sum(1 for r in requests if r["status"] in (429, 492))
        other = len(ticket_posts(requests, key)) - len(warm) - sum(len(t) for t in mine.values())

    print(f"yardstick (sequential httpx loop, 1 connection): {before:7.0f} tickets/s before, "
          f"{after:7.0f} after, mean {yard:7.0f}")
    print(f"opcore end to end: {len(mine)} tickets in {elapsed:6.2f} s = {rate:7.0f} tickets/s "
          f"(posting took {last_post - first_post:5.2f} s, {n / (last_post - first_post):5.0f} events/s; "
          f"first ticket {1000 * (first_ticket - first_post):5.0f} ms after the first POST)")
    print(f"ratio opcore / yardstick: {rate / yard:.2f} (target >= 0.5)")
    print("CPU per ticket while the claims went through: "
          + ", ".join(f"{name} {ms:.2f} ms" for name, ms in cpu.items()))
    print(f"checks: duplicate tickets {duplicates}, unexpected tickets {other}, 429/492 answers {limited}, "
          f"delivery stats {stats}")


if __name__ == "__main__":
    main()
