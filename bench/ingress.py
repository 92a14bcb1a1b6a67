"""Events accepted per second through POST /webhooks/orderprotection, beside a bare endpoint.

Both run as one uvicorn process on loopback; wrk (one thread, from a separate process) posts
the CONTRACT's claim.created example with a fresh event id per request, so every request is
accepted and enqueued in real Redis, not answered "duplicate". Prints both rates and their
ratio; the target is at least 0.5.

    python bench/ingress.py [--redis-url redis://127.0.0.1:6379/14] [--seconds 10]
    python bench/ingress.py --pair [--seconds 10]

``--pair`` starts a private primary and replica (redis-server on free ports, never the shared
Redis) and measures the ingress on it twice, with OPCORE_REDIS_REPLICAS=0 and =1, beside the bare
endpoint; it also counts the primary's ``WAIT`` calls per accepted event (one per group commit).
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
from opcore_hooks.testing import CLAIM_CREATED, RedisPair  # noqa: E402

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
    parser.add_argument("--pair", action="store_true", help="a private primary and replica; REPLICAS=0 and =1")
    args = parser.parse_args()

    event = dict(CLAIM_CREATED, id="EVENT_ID")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA % (json.dumps(event), SECRET))
        script = Path(f.name)

    results = {}
    port = free_port()
    with uvicorn("bench.bare:app", port):
        wrk(f"http://127.0.0.1:{port}", script, seconds=2, connections=args.connections)  # warm-up
        results["bare"] = wrk(f"http://127.0.0.1:{port}", script, seconds=args.seconds, connections=args.connections)
    waits: dict[str, float] = {}
    if args.pair:
        with tempfile.TemporaryDirectory(prefix="opcore-ingress-pair-") as tmp:
            pair = RedisPair(Path(tmp))
            try:
                for replicas in (0, 1):
                    name = f"replicas={replicas}"
                    results[name], waits[name] = run_opcore(pair.url, script, args, replicas)
            finally:
                pair.stop()
    else:
        results["opcore"], _ = run_opcore(args.redis_url, script, args, None)

    print(f"machine: {machine()}")
    print(f"wrk: 1 thread, {args.connections} connections, {args.seconds}s per endpoint, one uvicorn process each")
    for name, r in results.items():
        print(f"{name:>10}: {r['rps']:9.0f} req/s  p50 {r.get('p50_ms', 0):6.2f} ms  p99 {r.get('p99_ms', 0):6.2f} ms"
              f"  non-2xx {r['non_2xx']:.0f}" + (f"  WAITs per accepted event {waits[name]:.3f}" if name in waits else ""))
    for name, r in results.items():
        if name != "bare":
            print(f"  ratio {name} / bare: {r['rps'] / results['bare']['rps']:.2f} (target >= 0.5)")


def run_opcore(url: str, script: Path, args: argparse.Namespace, replicas: int | None) -> tuple[dict, float]:
    """wrk against ``opcore serve``'s app on ``url``; its figures, and WAIT calls per accepted event."""
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.config_resetstat()
    env = {"OPCORE_REDIS_URL": url, "OPCORE_WEBHOOK_SECRET": SECRET, "OPCORE_ADMIN_TOKEN": "bench-admin-token",
           "OPCORE_MASTER_KEY": generate_master_key()}
    if replicas is not None:
        env["OPCORE_REDIS_REPLICAS"] = str(replicas)
    port = free_port()
    with uvicorn("opcore_hooks.app:from_env", port, env=env, factory=True):
        wrk(f"http://127.0.0.1:{port}", script, seconds=2, connections=args.connections)
        result = wrk(f"http://127.0.0.1:{port}", script, seconds=args.seconds, connections=args.connections)
    accepted = client.hlen("opcore:dramatiq:opcore.msgs") + client.hlen("opcore:dramatiq:opcore.bulk.msgs")
    calls = client.info("commandstats").get("cmdstat_wait", {}).get("calls", 0)
    client.close()
    return result, calls / accepted if accepted else 0.0


if __name__ == "__main__":
    main()
