"""Many stores at once: 1,000 stores with a key each, 5 claims each, at Richpanel's real quota.

Each store is connected through the settings API (its key registered on the sandbox, checked
with one GET /v1/teams), then every store's claims are posted, interleaved store by store, over
16 connections: as fast as they go (``--rate 0``, the default) for the throughput, or open loop
at ``--rate`` events a second for the event-to-ticket time of a deployment that keeps up. Pacing
is Richpanel's real 50 requests per 30 s per key in the sandbox and in opcore; no key comes near
it (6 requests each), so what is measured is the cost of many keys: pacing state, claim records
and settings for each. Processes: sandbox, ``opcore serve``, ONE ``opcore worker`` (8 threads),
Redis db 13 (flushed first).

Printed: tickets per second from the first POST to the last ticket; event-to-ticket p50/p90/p99
(from just before each POST to the sandbox's record of its ticket); Redis memory (``INFO
memory``'s used_memory) per store once connected and per claim once delivered, and the keys left
behind by kind.

    python bench/stores.py [--stores 1000] [--claims-per-store 5] [--rate 0] [--redis-url ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _opcore import (  # noqa: E402
    LIMIT_STATUSES,
    NAMESPACE,
    REDIS_URL,
    BenchError,
    api_key,
    claim_event,
    describe,
    header,
    post_each,
    run_id,
    stack,
    ticket_times,
)


def used_memory(st) -> int:
    return int(st.redis.info("memory")["used_memory"])


#: Key families named by their first part alone; the rest (``richpanel:claim``) by their first two.
_HOST_FAMILIES = {"rm", "seen", "inflight", "dead", "dramatiq"}


def key_kinds(st) -> Counter[str]:
    """Keys by family (``seen``, ``rm``, ``richpanel:claim``, ``richpanel:pace`` ...)."""
    kinds: Counter[str] = Counter()
    for raw in st.redis.scan_iter(match=f"{NAMESPACE}:*", count=5000):
        parts = raw.decode().split(":")
        kinds[parts[1] if parts[1] in _HOST_FAMILIES else ":".join(parts[1:3])] += 1
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", type=int, default=1000)
    parser.add_argument("--claims-per-store", type=int, default=5)
    parser.add_argument("--rate", type=float, default=0.0, help="events per second; 0: as fast as they go")
    parser.add_argument("--quota", type=int, default=50)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--redis-url", default=REDIS_URL)
    args = parser.parse_args()
    rid, n = run_id(), args.stores * args.claims_per_store
    header("stores: many stores, a key each, at the real quota", {
        "stores": args.stores, "claims per store": args.claims_per_store, "claims": n,
        "posting": f"16 connections, {'as fast as they go' if not args.rate else f'{args.rate:g} events/s'}",
        "quota": f"{args.quota} per {args.window:g} s per key (sandbox and opcore pacing)",
        "worker": f"1 process x {args.threads} threads", "redis": args.redis_url})

    with stack(args.redis_url, sandbox_quota=args.quota, sandbox_window=args.window, opcore_quota=args.quota,
               opcore_window=args.window, threads=args.threads) as st:
        stores = [f"store-{rid}-{s}" for s in range(args.stores)]
        before = used_memory(st)
        began = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda s: st.connect_store(s, api_key(s)), stores))
        connected = used_memory(st)
        print(f"connected {args.stores} stores in {time.monotonic() - began:.1f} s; Redis "
              f"{(connected - before) / args.stores:.0f} bytes per store")

        events, claims = [], []
        for j in range(args.claims_per_store):
            for s, store in enumerate(stores):
                claims.append(f"c-{rid}-{s}-{j}")
                events.append(claim_event(store, claims[-1], s * args.claims_per_store + j))
        cpu_before = {p.name: p.cpu_seconds() for p in st.procs}
        sent = post_each(st, events, rate=args.rate or None, timeout=600)
        first_post = min(sent)
        deadline = time.monotonic() + 600
        done = st.wait_stat("tickets", n, deadline)
        if done < n:
            raise BenchError(f"only {done} of {n} tickets within 600 s")
        cpu = {p.name: (p.cpu_seconds() - cpu_before[p.name]) / n * 1000 for p in st.procs}
        time.sleep(1.0)  # the last write-behind and acks
        delivered = used_memory(st)
        kinds = key_kinds(st)
        stats = st.stats()
        requests = st.sandbox_requests()

    times = ticket_times(requests)
    missing = [c for c in claims if c not in times]
    if missing:
        raise BenchError(f"{len(missing)} claims have no ticket in the sandbox, e.g. {missing[:3]}")
    last_ticket = max(min(times[c]) for c in claims)
    latency = [min(times[c]) - t for c, t in zip(claims, sent, strict=True)]
    limited = sum(1 for r in requests if r["status"] in LIMIT_STATUSES)
    dupes = sum(len(times[c]) - 1 for c in claims)
    print(f"opcore: {n} tickets for {args.stores} stores in {last_ticket - first_post:.2f} s = "
          f"{n / (last_ticket - first_post):.0f} tickets/s (posting took {max(sent) - first_post:.2f} s)")
    print(f"event to ticket: {describe(latency)}")
    print("CPU per ticket while the claims went through: " + ", ".join(f"{k} {v:.2f} ms" for k, v in cpu.items()))
    print(f"Redis: {(delivered - connected) / n:.0f} bytes per claim delivered "
          f"(used_memory {before / 1e6:.1f} -> {connected / 1e6:.1f} -> {delivered / 1e6:.1f} MB)")
    print("keys by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    print(f"checks: 429/492 answers {limited}, duplicate tickets {dupes}, delivery stats {stats}")


if __name__ == "__main__":
    main()
