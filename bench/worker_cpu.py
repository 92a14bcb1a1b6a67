"""CPU one worker process spends per ticket, without the network's noise, in one process.

N claim.created events are accepted through the ingress app (a TestClient, before the clock
starts); then an embedded worker with T threads delivers them, Richpanel answering from an
in-process httpx.MockTransport (or, with --sandbox-url, a real sandbox over a socket). The
figure is the process's CPU time from the worker's start to the N-th ticket, divided by N:
what bench/pipeline.py's worker spends, minus the HTTP stack when mocked. Use it to see where
a change moves the worker's cost; bench/pipeline.py is the end-to-end judge.

    python bench/worker_cpu.py [--claims 3000] [--threads 8] [--redis-url redis://127.0.0.1:6379/12]
                               [--sandbox-url http://127.0.0.1:PORT]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

import httpx
from starlette.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _opcore import claim_event, header  # noqa: E402

from opcore_hooks.app import create_app  # noqa: E402
from opcore_hooks.config import Settings  # noqa: E402
from opcore_hooks.crypto import generate_master_key  # noqa: E402
from opcore_hooks.host import Host  # noqa: E402
from opcore_hooks.store import connect  # noqa: E402
from opcore_hooks.worker import EmbeddedWorker  # noqa: E402
from plugins.richpanel import plugin, session, stores  # noqa: E402
from plugins.richpanel.stores import SettingsUpdate  # noqa: E402

SECRET = "whsec_bench_worker_cpu"
KEY = "rp_bench_WorkerCpuKey_0001"
TEAM = "0b5e6a3c-7d1f-4c2a-9e8b-1f2d3c4b5a69"


def richpanel(request: httpx.Request) -> httpx.Response:
    if request.url.path.endswith("/v1/teams"):
        return httpx.Response(200, json={"team": [{"id": TEAM, "name": "Claims"}]})
    return httpx.Response(200, json={"ticket": {"id": uuid.uuid4().hex}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--claims", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--sandbox-url", help="a running sandbox (quota off) instead of the mock")
    args = parser.parse_args()
    header("worker CPU per ticket (in process)", {
        "claims": args.claims, "threads": args.threads, "redis": args.redis_url,
        "richpanel": args.sandbox_url or "httpx.MockTransport"})
    # Pacing stays on (every turn runs it) but never holds anything back, as in bench/pipeline.py.
    os.environ.update(OPCORE_RICHPANEL_QUOTA="1000000", OPCORE_RICHPANEL_WINDOW_SECONDS="30",
                      OPCORE_RICHPANEL_API_URL=args.sandbox_url or "http://richpanel.invalid")
    client = connect(args.redis_url)
    client.flushdb()
    settings = Settings(_env_file=None, redis_url=args.redis_url, webhook_secret=SECRET, admin_token="bench-admin",
                        master_key=generate_master_key(), namespace="opbench", plugins="")
    host = Host(settings, redis_client=client, plugins={"richpanel": plugin})
    if args.sandbox_url:
        httpx.put(f"{args.sandbox_url}/_sandbox/config", json={"quota": None}).raise_for_status()
        httpx.post(f"{args.sandbox_url}/_sandbox/accounts",
                   json={"api_key": KEY, "teams": [{"id": TEAM, "name": "Claims"}]}).raise_for_status()
    else:
        session.set_http(host, httpx.MockTransport(richpanel))
    stores.update(host, "store_cpu", SettingsUpdate(api_key=KEY, default_team_id=TEAM, default_channel="email"))
    with TestClient(create_app(host)) as app:
        for i in range(args.claims):
            body = json.dumps(claim_event("store_cpu", f"cpu-{i}", i))
            answer = app.post("/webhooks/orderprotection", content=body,
                              headers={"x-webhook-secret": SECRET, "content-type": "application/json"})
            answer.raise_for_status()
    delivery = host.delivery("richpanel")
    worker = EmbeddedWorker(host, threads=args.threads)
    cpu, wall = time.process_time(), time.perf_counter()
    worker.start()
    deadline = time.monotonic() + 300
    while delivery.stats().get("tickets", 0) < args.claims:
        if time.monotonic() > deadline:
            raise SystemExit("the tickets did not all open within 300 s")
        time.sleep(0.01)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    worker.stop()
    print(f"{args.claims} tickets: {wall:.2f} s wall = {args.claims / wall:.0f} tickets/s; "
          f"CPU {cpu * 1000 / args.claims:.2f} ms per ticket")
    host.close()
    client.flushdb()


if __name__ == "__main__":
    main()
