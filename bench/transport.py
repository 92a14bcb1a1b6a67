"""CPU per request of the transport that sends tickets: httpx's own pool against the host's.

Each transport POSTs the same Richpanel ticket N times to a sandbox process (quota off), from 1
thread and from 8 threads (as one worker process sends), building each ``httpx.Request`` and
reading each answer as ``RichpanelClient`` does. The figure is this process's CPU time divided
by the requests: what a worker spends to send one ticket, without Redis or Dramatiq. The
transports run alternately, ``--rounds`` times, so both meet the same moments of the machine.

    python bench/transport.py [--requests 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _opcore import api_key, claim_event, free_port, header, proc  # noqa: E402

from opcore_hooks import ClaimCreated, ThreadTransport  # noqa: E402
from opcore_hooks.config import Settings  # noqa: E402
from plugins.richpanel.client import KEY_HEADER  # noqa: E402
from plugins.richpanel.tickets import build_ticket  # noqa: E402

TIMEOUT = httpx.Timeout(10.0).as_dict()


def send_all(transport: httpx.BaseTransport, url: httpx.URL, key: str, body: dict, count: int, threads: int) -> float:
    """CPU µs per request of ``count`` requests spread over ``threads`` threads."""

    def send(n: int) -> None:
        for _ in range(n):
            request = httpx.Request("POST", url, json=body, headers={KEY_HEADER: key, "accept": "application/json"},
                                    extensions={"timeout": TIMEOUT})
            response = transport.handle_request(request)
            try:
                response.read()
            finally:
                response.close()
            if response.status_code != 200:
                raise SystemExit(f"the sandbox answered {response.status_code}")
            response.json()

    send(20)  # warm-up: connections, imports
    workers = [threading.Thread(target=send, args=(count // threads,)) for _ in range(threads)]
    cpu = time.process_time()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return (time.process_time() - cpu) * 1e6 / (count // threads * threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    header("transport: CPU per ticket request", {"requests": args.requests, "rounds": args.rounds,
                                                  "threads": "1 and 8", "sandbox": "quota off"})
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="opcore-bench-") as logdir, proc(
            "sandbox", [sys.executable, "-m", "uvicorn", "plugins.richpanel.sandbox:create_sandbox", "--factory",
                        "--port", str(port), "--log-level", "warning", "--no-access-log", "--lifespan", "off"],
            Path(logdir), port=port):
        base = f"http://127.0.0.1:{port}"
        key = api_key("trns")
        httpx.put(f"{base}/_sandbox/config", json={"quota": None}).raise_for_status()
        httpx.post(f"{base}/_sandbox/accounts", json={"api_key": key}).raise_for_status()
        claim = ClaimCreated.model_validate(claim_event("store_transport", "transport-claim", 0)["body"])
        body = {"ticket": build_ticket(claim, Settings(_env_file=None).claim_url(claim.claim_id))}
        url = httpx.URL(f"{base}/v1/tickets")
        makers = {"httpx.HTTPTransport (shared pool)": lambda: httpx.HTTPTransport(
                      limits=httpx.Limits(max_connections=64, max_keepalive_connections=16)),
                  "ThreadTransport (host)": ThreadTransport}
        figures: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.rounds):
            for name, make in makers.items():
                for threads in (1, 8):
                    transport = make()
                    try:
                        figures.setdefault((name, threads), []).append(
                            send_all(transport, url, key, body, args.requests, threads))
                    finally:
                        transport.close()
        print(f"{'transport':36s} {'threads':>7s}  CPU µs per request (median; each round)")
        for (name, threads), values in figures.items():
            rounds = ", ".join(f"{v:.0f}" for v in values)
            print(f"{name:36s} {threads:7d}  {statistics.median(values):6.0f}  ({rounds})")


if __name__ == "__main__":
    main()
