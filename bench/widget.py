"""Signed widget requests per second, JSON and HTML, beside a bare Starlette JSON endpoint.

The customer has 50 orders and 50 claims in real Redis. Each endpoint runs in its own uvicorn
process on loopback and wrk (one thread, a separate process) sends the same signed request over
and over, so every request pays the whole path: two Redis round trips, decrypting the store's
secret, the HMAC check, sorting the read model, the hook and rendering. The yardstick returns the
very same JSON document from memory, so the ratio is the cost of that work, not of a smaller
answer. The panel keeps rendered answers per customer and context version, so a repeated
request is "warm"; the "cold" rows run a second widget server whose answer cache never hits,
so every request reads the read model, calls the hook and renders, as a first view does.
Targets: ratio >= 0.5, p99 < 20 ms.

    python bench/widget.py [--redis-url redis://127.0.0.1:6379/14] [--seconds 10] [--connections 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import free_port, machine, uvicorn, wrk  # noqa: E402

from opcore_hooks import Host, Panel, hookimpl  # noqa: E402
from opcore_hooks.config import Settings  # noqa: E402
from opcore_hooks.crypto import generate_master_key  # noqa: E402
from opcore_hooks.events import parse_body  # noqa: E402
from opcore_hooks.panel import render  # noqa: E402
from opcore_hooks.testing import claim_created  # noqa: E402
from plugins.richpanel import widget  # noqa: E402
from plugins.richpanel.settings import RichpanelSettings  # noqa: E402

STORE, EMAIL = "store_bench", "ana@example.com"
LUA = 'wrk.method = "GET"\nwrk.headers["X-OP-Signature"] = "%s"\nwrk.headers["Accept"] = "%s"\n'


class WidgetOnly:
    """The widget's share of the Richpanel plugin, so the figures do not depend on the rest."""

    @hookimpl
    def register_settings(self) -> type[RichpanelSettings]:
        return RichpanelSettings

    @hookimpl
    def register_panel(self, host: Host) -> Panel:
        return widget.panel(host)

    @hookimpl
    def widget_context(self, host: Host, store_id: str, context: Any) -> dict[str, Any]:
        return widget.shape_context(host, store_id, context)


def app() -> Starlette:
    """uvicorn factory for the widget server (settings from the environment)."""
    from opcore_hooks.app import create_app

    if os.environ.get("BENCH_COLD"):
        render.Answers.get = lambda self, key, now: None  # every request is a first view
    return create_app(Host(Settings(), plugins={"richpanel": WidgetOnly()}))


def bare() -> Starlette:
    """uvicorn factory for the yardstick: the same JSON document, from memory."""
    document = json.loads(os.environ["BENCH_DOCUMENT"])

    async def answer(request: Request) -> JSONResponse:
        return JSONResponse(document)

    return Starlette(routes=[Route("/widgets/richpanel/{store_id}", answer)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()

    redis.Redis.from_url(args.redis_url).flushdb()
    env = {"OPCORE_REDIS_URL": args.redis_url, "OPCORE_MASTER_KEY": generate_master_key(),
           "OPCORE_ADMIN_TOKEN": "bench-admin-token", "OPCORE_WEBHOOK_SECRET": "bench-webhook-secret"}
    host = Host(Settings(**{k.removeprefix("OPCORE_").lower(): v for k, v in env.items()}),
                plugins={"richpanel": WidgetOnly()})
    seed(host)
    host.panel("richpanel").provision(STORE)
    document = widget.shape_context(host, STORE, host.readmodel.customer_context(STORE, EMAIL))
    assert len(document["claims"]) == 50 and len(host.readmodel.customer_context(STORE, EMAIL).orders) == 50

    def run(port: int, accept: str) -> dict[str, float]:
        example = host.panel("richpanel").signed_request_example(STORE, EMAIL, f"http://127.0.0.1:{port}")
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
            f.write(LUA % (example["headers"]["X-OP-Signature"], accept))
        wrk(example["url"], Path(f.name), seconds=2, connections=args.connections)  # warm-up
        return wrk(example["url"], Path(f.name), seconds=args.seconds, connections=args.connections)

    results = {}
    port = free_port()
    with uvicorn("bench.widget:bare", port, env={"BENCH_DOCUMENT": json.dumps(document)}, factory=True):
        results["bare JSON"] = run(port, "application/json")
    port = free_port()
    with uvicorn("bench.widget:app", port, env=env, factory=True):
        results["widget JSON"] = run(port, "application/json")
        results["widget HTML"] = run(port, "text/html")
    port = free_port()
    with uvicorn("bench.widget:app", port, env={**env, "BENCH_COLD": "1"}, factory=True):
        results["cold JSON"] = run(port, "application/json")
        results["cold HTML"] = run(port, "text/html")

    print(f"machine: {machine()}")
    print(f"wrk: 1 thread, {args.connections} connections, {args.seconds}s per endpoint, one uvicorn process each;"
          f" customer with 50 orders and 50 claims (panel shows {widget.RECENT_ORDERS} orders, 50 claims)")
    base = results["bare JSON"]["rps"]
    for name, r in results.items():
        print(f"{name:>12}: {r['rps']:8.0f} req/s  p50 {r.get('p50_ms', 0):6.2f} ms  p99 {r.get('p99_ms', 0):6.2f} ms"
              f"  non-2xx {r['non_2xx']:.0f}  ratio {r['rps'] / base:.2f}")
    print("targets: ratio >= 0.5 of the bare endpoint, p99 < 20 ms")
    host.close()


def seed(host: Host) -> None:
    """50 claims and 50 orders, two items each, for EMAIL in STORE."""
    rm = host.readmodel
    for n in range(50):
        event = claim_created(claim_id=f"claim-{n:03d}", claim_number=f"OP-{1000 + n}", order=None, store_id=STORE,
                              customer={"email": EMAIL, "first_name": "Ana", "last_name": "Lima"},
                              created_at=f"2026-10-{1 + n % 28:02d}T{n % 24:02d}:{n:02d}:00Z")
        rm.record_claim(parse_body("claim.created", event["body"]), None)
        rm.record_order(parse_body("order.upserted", {
            "store_id": STORE, "customer": {"email": EMAIL, "first_name": "Ana", "last_name": "Lima"},
            "order": {"order_number": f"#{2000 + n}", "placed_at": f"2026-09-{1 + n % 28:02d}T{n % 24:02d}:{n:02d}:00Z",
                      "currency": "USD", "total": f"{10 + n}.99",
                      "line_items": [{"item_name": "Wireless Mouse", "quantity": 1},
                                     {"item_name": "USB-C cable, 2 m", "quantity": 2}]}}))


if __name__ == "__main__":
    main()
