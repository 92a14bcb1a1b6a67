"""Idle latency from event to ticket, p50 and p99.

Claims are posted one at a time: each waits for its ticket before the next is posted, after a
random pause of 50-250 ms, so every claim meets an idle pipeline (the worker's consumers back
off to their 100 ms poll when idle). The time is measured from just before the POST to
``opcore serve``'s ingress to the moment the sandbox recorded the ticket (the sandbox stamps a
request with ``time.time()`` once handled; matched by the claim link in the ticket). The
claims go round-robin to 4 stores, each with its own key at Richpanel's normal quota (50 per
30 s, sandbox and opcore pacing), so the quota never binds and pacing still runs as in
production. Processes: sandbox, ``opcore serve``, ONE ``opcore worker`` (8 threads), Redis db
13 (flushed first). Also prints the ingress's own answer time.

    python bench/latency.py [--claims 200] [--stores 4] [--redis-url redis://127.0.0.1:6379/13]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _opcore import (  # noqa: E402
    LIMIT_STATUSES,
    REDIS_URL,
    BenchError,
    api_key,
    claim_event,
    describe,
    header,
    run_id,
    stack,
    ticket_times,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--claims", type=int, default=200)
    parser.add_argument("--stores", type=int, default=4, help="stores (keys) the claims go round-robin to")
    parser.add_argument("--pause", type=float, nargs=2, default=(0.05, 0.25), metavar=("MIN", "MAX"),
                        help="random pause between a ticket and the next claim, seconds")
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=110.0, help="seconds allowed for all claims")
    args = parser.parse_args()
    rid = run_id()
    header("latency: idle event-to-ticket time", {
        "claims": f"{args.claims}, one at a time, {args.pause[0]:g}-{args.pause[1]:g} s pause after each ticket",
        "stores": f"{args.stores} (one key each, 50 per 30 s)", "worker": f"1 process x {args.threads} threads",
        "redis": args.redis_url})

    sent: dict[str, float] = {}
    answered: list[float] = []
    with stack(args.redis_url, sandbox_quota=50, sandbox_window=30.0, opcore_quota=50, opcore_window=30.0,
               threads=args.threads) as st:
        stores = [f"store_{i}" for i in range(args.stores)]
        for j, store in enumerate(stores):
            st.connect_store(store, api_key(f"l{j:03d}"))
        deadline = time.monotonic() + args.timeout
        with httpx.Client(timeout=30) as client:
            for i in range(args.claims):
                if time.monotonic() > deadline:
                    print(f"!! stopped at the {args.timeout:g} s deadline after {i} claims")
                    break
                store, claim = stores[i % len(stores)], f"lat-{rid}-{i}"
                sent[claim] = st.post_event(client, claim_event(store, claim, i))
                answered.append(time.time() - sent[claim])
                limit = time.monotonic() + 10
                while st.stat("tickets") < i + 1:
                    if time.monotonic() > limit:
                        raise BenchError(f"no ticket for {claim} within 10 s")
                    time.sleep(0.002)
                time.sleep(random.uniform(*args.pause))
        stats = st.stats()
        requests = st.sandbox_requests()

    times = ticket_times(requests)
    lat = [min(times[c]) - t for c, t in sent.items() if c in times]
    limited = sum(1 for r in requests if r["status"] in LIMIT_STATUSES)
    print(f"event to ticket: {describe(lat)}")
    print(f"ingress answer (POST round trip): {describe(answered)}")
    print(f"checks: tickets {len(lat)}/{len(sent)}, duplicate tickets {sum(len(t) - 1 for t in times.values())}, "
          f"429/492 answers {limited}, delivery stats {stats}")


if __name__ == "__main__":
    main()
