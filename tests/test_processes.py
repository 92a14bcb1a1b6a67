"""The real commands, as an operator runs them: `python runner.py serve` in embedded mode."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from opcore_hooks.crypto import generate_master_key
from opcore_hooks.testing import ADMIN_TOKEN, WEBHOOK_SECRET, claim_created

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_embedded_serve_accepts_events_and_runs_its_own_workers():
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPCORE_")}
    env.update(OPCORE_WEBHOOK_SECRET=WEBHOOK_SECRET, OPCORE_ADMIN_TOKEN=ADMIN_TOKEN,
               OPCORE_MASTER_KEY=generate_master_key())
    proc = subprocess.Popen([sys.executable, "runner.py", "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                health = httpx.get(f"{base}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
                time.sleep(0.1)
        assert health.json()["store"] == "embedded"
        assert "richpanel" in health.json()["plugins"]
        event = claim_created()
        answer = httpx.post(f"{base}/webhooks/orderprotection", json=event,
                            headers={"x-webhook-secret": WEBHOOK_SECRET}, timeout=5)
        assert answer.status_code == 202
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=15)
    assert "Nothing survives this process" in output  # the embedded-mode warning
    # A graceful stop: the in-process workers shut down, then uvicorn re-raises SIGTERM.
    assert "Worker has been shut down" in output
    assert proc.returncode in (0, -15), output


def test_the_demo_runs_the_whole_flow_and_prints_a_widget_request_that_works():
    """`opcore demo` as the README's first step: exit 0 only when every claim has one ticket and
    every message of a claim is one private note on it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPCORE_")}
    result = subprocess.run([sys.executable, "runner.py", "demo", "--claims", "12", "--window", "2"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=110)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: 12 claims, one ticket each" in result.stdout
    said = " ".join(result.stdout.split())  # the console wraps long lines
    assert "8 messages, each one private note on its claim's ticket in created_at order" in said
    assert "nothing public written to a ticket after its creation" in said
    assert "curl -H 'X-OP-Signature: t=" in result.stdout
