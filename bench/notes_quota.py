"""What the note mirror costs a backlog: the share of the quota notes take, and claim-to-ticket time.

Two backlogs of N claims (default 150) on two keys of the same sandbox, each key limited to
``quota`` requests per window (Richpanel's 50 per 30 s, scaled down by ``--scale``, default 10:
50 per 3 s), and opcore's pacing told the same:

- **off**: the store's mirror is off; N claim.created.
- **on**: the store's mirror is on; each claim.created is followed by three message.created
  for that claim (so 3N notes), posted in the same burst.

Per backlog we report, from the sandbox's own request log: the claim-to-ticket time of each
claim (ticket request time minus the burst's first post: a backlog's tickets wait their turn),
its p50, p90 and max, the span from first to last ticket, and for **on** the share of the key's
requests that were notes while the tickets were still going out and over the whole run, and when
the last note went. The creations should not wait for the notes (notes take a request only when
no creation is booked ahead), so the two ticket spans should match, and notes should fill the
quota after the last ticket.

Processes: sandbox, ``opcore serve``, ONE ``opcore worker`` (8 threads), Redis db 13 (flushed).

    python bench/notes_quota.py [--claims 150] [--scale 10] [--redis-url redis://127.0.0.1:6379/13]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _opcore import (  # noqa: E402
    ADMIN,
    LIMIT_STATUSES,
    REDIS_URL,
    BenchError,
    api_calls,
    api_key,
    claim_event,
    header,
    percentile,
    post_burst,
    run_id,
    stack,
    ticket_times,
)

from opcore_hooks.testing import message_created  # noqa: E402


def backlog(st: Any, store: str, key: str, n: int, rid: str, *, mirror: bool, window: float,
            quota: int) -> dict[str, Any]:
    st.connect_store(store, key)
    if mirror:
        answer = st.http.put(f"{st.opcore_url}/internal/integrations/richpanel/stores/{store}",
                             headers={"Authorization": f"Bearer {ADMIN}"}, json={"mirror_messages": True})
        if answer.status_code != 200 or answer.json().get("mirror_messages") is not True:
            raise BenchError(f"turning the mirror on: {answer.status_code} {answer.text}")
    time.sleep(window * 1.1 + 0.5)  # the settings checks leave the window
    claims = [f"nq-{rid}-{store}-{i}" for i in range(n)]
    events: list[dict[str, Any]] = []
    for i, claim in enumerate(claims):
        events.append(claim_event(store, claim, i))
        if mirror:
            events += [message_created(claim, f"message {m} of claim {i}", store_id=store, message_id=f"m{m}",
                                       created_at=f"2026-11-27T10:0{m}:00Z") for m in range(3)]
    since = time.time()
    first_post, _ = post_burst(st, events)
    notes_wanted = 3 * n if mirror else 0
    deadline = time.monotonic() + (n + notes_wanted) / quota * window * 1.6 + 60
    while time.monotonic() < deadline:
        st.check()
        requests = st.sandbox_requests()
        times = ticket_times(requests, key)
        notes = [r for r in api_calls(requests, key, since) if r["method"] == "PUT" and not r["path"].endswith("/snooze")
                 and r["status"] == 200]
        if len([c for c in claims if c in times]) >= n and len(notes) >= notes_wanted:
            break
        time.sleep(0.5)
    else:
        raise BenchError(f"backlog {'on' if mirror else 'off'} did not finish before its deadline")
    calls = api_calls(requests, key, since)
    firsts = sorted(min(times[c]) for c in claims)
    waits = [t - first_post for t in firsts]
    last_ticket = firsts[-1]
    during = [r for r in calls if r["time"] <= last_ticket]
    note_during = [r for r in during if r["method"] == "PUT"]
    return {"tickets": len(firsts), "duplicates": sum(len(times[c]) - 1 for c in claims),
            "p50": percentile(waits, 50), "p90": percentile(waits, 90), "max": max(waits),
            "span": last_ticket - firsts[0], "calls": len(calls),
            "limited": sum(1 for r in calls if r["status"] in LIMIT_STATUSES), "notes": len(notes),
            "note_share_during": len(note_during) / len(during) if during else 0.0,
            "note_share_all": len(notes) / len(calls) if calls else 0.0,
            "last_note_after_last_ticket": (max(r["time"] for r in notes) - last_ticket) if notes else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--claims", type=int, default=150)
    parser.add_argument("--quota", type=int, default=50)
    parser.add_argument("--window", type=float, default=30.0, help="Richpanel's window, before scaling")
    parser.add_argument("--scale", type=float, default=10.0, help="the window is divided by this")
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    n, q, rid = args.claims, args.quota, run_id()
    window = args.window / args.scale
    header("notes_quota: a backlog's tickets with the note mirror off, and on with 3 messages per claim", {
        "claims": n, "quota": f"{q} per {window:g} s on each key (sandbox and opcore's pacing; Richpanel's "
        f"{q} per {args.window:g} s scaled down {args.scale:g}x)", "worker": f"1 process x {args.threads} threads",
        "redis": args.redis_url})
    with stack(args.redis_url, sandbox_quota=q, sandbox_window=window, opcore_quota=q, opcore_window=window,
               threads=args.threads) as st:
        off = backlog(st, "store_off", api_key("noff"), n, rid, mirror=False, window=window, quota=q)
        on = backlog(st, "store_on", api_key("non"), n, rid, mirror=True, window=window, quota=q)
        stats = st.stats()
    for name, r in (("mirror off", off), ("mirror on, 3 msgs/claim", on)):
        after = r["last_note_after_last_ticket"]
        print(f"{name:>24}: tickets {r['tickets']}/{n} (duplicates {r['duplicates']}), claim-to-ticket "
              f"p50 {r['p50']:.2f} s, p90 {r['p90']:.2f} s, max {r['max']:.2f} s; tickets span {r['span']:.2f} s; "
              f"calls {r['calls']}, 429/492 {r['limited']}; notes {r['notes']}, share of calls while tickets went "
              f"out {100 * r['note_share_during']:.1f}%, over the run {100 * r['note_share_all']:.1f}%"
              + (f", last note {after:.2f} s after the last ticket" if after is not None else ""))
    print(f"delivery stats: {stats}")
    print(f"backlog max claim-to-ticket, on / off: {on['max'] / off['max']:.3f}")


if __name__ == "__main__":
    main()
