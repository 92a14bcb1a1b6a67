"""Events accepted per second through POST /webhooks/orderprotection, beside a bare endpoint.

Both run as one uvicorn process on loopback; wrk (one thread, from a separate process) posts
the CONTRACT's claim.created example with a fresh event id per request, so every request is
accepted and enqueued in real Redis, not answered "duplicate". Prints both rates and their
ratio; the target is at least 0.5.

    python bench/ingress.py [--redis-url redis://127.0.0.1:6379/14] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import free_port, machine, uvicorn, wrk  # noqa: E402

from opcore_hooks.crypto import generate_master_key  # noqa: E402
from opcore_hooks.testing import CLAIM_CREATED  # noqa: E402

SECRET = "bench-webhook-secret"

LUA = """
local counter = 0
local prefix = tostring(math.random(1, 1000000000))
local template = [==[%s]==]
request = function()
  counter = counter + 1
  local body = string.gsub(template, "EVENT_ID", prefix .. "-" .. counter)
  return wrk.format("POST", "/webhooks/orderprotection",
    {["content-type"] = "application/json", ["x-webhook-secret"] = "%s"}, body)
end
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()

    redis.Redis.from_url(args.redis_url).flushdb()
    event = dict(CLAIM_CREATED, id="EVENT_ID")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA % (json.dumps(event), SECRET))
        script = Path(f.name)

    env = {"OPCORE_REDIS_URL": args.redis_url, "OPCORE_WEBHOOK_SECRET": SECRET, "OPCORE_ADMIN_TOKEN": "bench-admin-token",
           "OPCORE_MASTER_KEY": generate_master_key()}
    results = {}
    port = free_port()
    with uvicorn("bench.bare:app", port):
        wrk(f"http://127.0.0.1:{port}", script, seconds=2, connections=args.connections)  # warm-up
        results["bare"] = wrk(f"http://127.0.0.1:{port}", script, seconds=args.seconds, connections=args.connections)
    port = free_port()
    with uvicorn("opcore_hooks.app:from_env", port, env=env, factory=True):
        wrk(f"http://127.0.0.1:{port}", script, seconds=2, connections=args.connections)
        results["opcore"] = wrk(f"http://127.0.0.1:{port}", script, seconds=args.seconds, connections=args.connections)
    r = redis.Redis.from_url(args.redis_url)
    queued = r.hlen("opcore:dramatiq:opcore.msgs") + r.hlen("opcore:dramatiq:opcore.bulk.msgs")

    print(f"machine: {machine()}")
    print(f"wrk: 1 thread, {args.connections} connections, {args.seconds}s per endpoint, one uvicorn process each")
    for name, r in results.items():
        print(f"{name:>7}: {r['rps']:9.0f} req/s  p50 {r.get('p50_ms', 0):6.2f} ms  p99 {r.get('p99_ms', 0):6.2f} ms"
              f"  non-2xx {r['non_2xx']:.0f}")
    print(f"  ratio: {results['opcore']['rps'] / results['bare']['rps']:.2f} (target >= 0.5)")
    print(f"messages enqueued in Redis by opcore: {queued}")


if __name__ == "__main__":
    main()
