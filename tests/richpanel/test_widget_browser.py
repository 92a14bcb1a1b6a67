"""The panel in a real browser: headless Chromium at Richpanel's sidebar width.

Chromium is driven over the DevTools protocol on ``--remote-debugging-pipe`` (NUL-separated
JSON on file descriptors 3 and 4), so the test needs no Python package beyond the standard
library: it sees every console message, every CSP violation and the page's real layout. A
control page that breaks the CSP on purpose proves the detector is not vacuous. The panel is
opened the way a helpdesk opens it: the provisioned ``iframe_url``, ``{email}`` filled in, in a
plain ``<iframe>`` of a stand-in helpdesk page, with no header added by anyone. The screenshot
is README's docs/widget.png.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import uvicorn
from starlette.responses import HTMLResponse

from opcore_hooks import Host
from opcore_hooks.app import create_app
from opcore_hooks.testing import approved, claim_created, feed, state_changed
from plugins.richpanel import plugin

pytestmark = pytest.mark.browser

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "widget.png"
STORE = "store_123"
WIDTH = 350


def helpdesk(app, panel_url: str):
    """Test-only pages beside the app: a helpdesk sidebar framing the panel, and a CSP control."""

    async def pages(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/helpdesk":  # what Richpanel's sidebar does
            page = HTMLResponse(f'<!doctype html><title>helpdesk</title><link rel="icon" href="data:,"><iframe id="panel" src="{panel_url}" '
                                f'width="{WIDTH}" height="900"></iframe>')
            await page(scope, receive, send)
            return
        if scope["type"] == "http" and scope["path"] == "/control":  # breaks the CSP on purpose
            page = HTMLResponse('<p style="color:red">x</p><script>console.log(1)</script>',
                                headers={"Content-Security-Policy": "default-src 'none'"})
            await page(scope, receive, send)
            return
        await app(scope, receive, send)

    return pages


_TRAMPOLINE = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
               "os.execv(sys.argv[3], sys.argv[3:])")


class Cdp:
    """Just enough of the DevTools protocol over a pipe: commands, and events kept in order."""

    def __init__(self, user_data: str) -> None:
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()
        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={user_data}", "--remote-debugging-pipe",
                f"--window-size={WIDTH},900"]
        # The pipe must be fds 3 and 4 in Chromium; a tiny exec trampoline puts it there without
        # preexec_fn, which is unsafe while the server thread runs (and sh cannot redirect fd > 9).
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _TRAMPOLINE, str(to_chrome_r), str(from_chrome_w), *args],
            pass_fds=(to_chrome_r, from_chrome_w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)  # its own process group, so closing it ends its helpers too
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._next, self._buffer, self.events = 0, b"", []
        self.session: str | None = None

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._r], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(self._r, 1 << 20) if ready else b""
            if not chunk:
                raise TimeoutError("Chromium did not answer over the DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, timeout: float = 15.0, **params: Any) -> dict[str, Any]:
        self._next += 1
        message = {"id": self._next, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._w, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("method") == method and not event.get("_seen"):
                    event["_seen"] = True
                    return event
            self.events.append(self._read(deadline))

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def problems(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions, CSP violations, failed loads."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
                found.append(f"{params['entry']['source']}: {params['entry']['text']}")
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "warning", "assert"):
                found.append(f"console.{params['type']}: {params['args']}")
            elif method == "Runtime.exceptionThrown":
                found.append(f"exception: {params['exceptionDetails'].get('text')}")
            elif method == "Audits.issueAdded":
                found.append(f"issue: {params['issue']['code']}")
        return found

    def close(self) -> None:
        self.session = None  # Browser.close goes to the browser, not the page
        try:
            self.send("Browser.close", timeout=5)
            self.proc.wait(timeout=5)
        except (OSError, RuntimeError, TimeoutError, subprocess.TimeoutExpired):
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group this test started, helpers included
        self.proc.wait(timeout=10)
        os.close(self._r)
        os.close(self._w)


def claim(claim_id: str, number: str, created_at: str, **body: Any) -> dict:
    event = claim_created(claim_id=claim_id, claim_number=number, created_at=created_at, **body)
    event["created_at"] = created_at
    return event


def order(number: str, placed_at: str, total: str, *items: tuple[str, int]) -> dict:
    return {"order_number": number, "placed_at": placed_at, "currency": "USD", "total": total,
            "line_items": [{"item_name": name, "quantity": qty} for name, qty in items]}


@pytest.fixture
def served(settings, monkeypatch):
    """The app on 127.0.0.1 with a realistic customer; yields its base URL and the panel's URL."""
    monkeypatch.setenv("OPCORE_RICHPANEL_FRAME_ANCESTORS", "'self'")  # the stand-in helpdesk's origin
    host = Host(settings, redis_client=fakeredis.FakeRedis(server=fakeredis.FakeServer()),
                plugins={"richpanel": plugin})
    feed(host,
         claim("cm1", "OP-1042", "2026-11-27T09:59:58Z"),
         claim("cm2", "OP-1057", "2026-11-24T15:20:00Z", claim_type="MISSING_ITEM",
               order=order("#1001-B", "2026-11-18T10:00:00Z", "118.40", ("Ceramic pour-over coffee set", 1),
                           ("Unbleached paper filters, 100 pack", 3))),
         claim("cm3", "OP-0988", "2026-10-02T08:00:00Z", claim_type="ORDER_DELIVERED_NOT_RECEIVED",
               order=order("#0950", "2026-09-28T10:00:00Z", "59.00",
                           ("Stainless-steel-insulated-travel-tumbler-with-an-unbreakably-long-name", 2))),
         approved("cm1"),
         state_changed("cm2", "WAITING_FOR_BRAND", created_at="2026-11-25T10:00:00Z"),
         state_changed("cm3", "DENIED", created_at="2026-10-05T10:00:00Z"))
    host.panel("richpanel").provision(STORE)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    panel_url = host.panel("richpanel").iframe_url(STORE, base).replace("{email}", "ana%40example.com")
    server = uvicorn.Server(uvicorn.Config(helpdesk(create_app(host), panel_url), log_level="warning",
                                          lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield base, panel_url
    server.should_exit = True
    thread.join(timeout=10)
    host.close()


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found: install Debian's chromium package to run this")
def test_the_panel_renders_cleanly_at_sidebar_width(served):
    base, panel_url = served
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        cdp = Cdp(profile)
        try:
            target = cdp.send("Target.createTarget", url="about:blank")["targetId"]
            cdp.session = cdp.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Audits"):
                cdp.send(f"{domain}.enable")
            cdp.send("Emulation.setDeviceMetricsOverride", width=WIDTH, height=900, deviceScaleFactor=2, mobile=False)

            cdp.open(f"{base}/control")  # the detector must see a CSP violation here
            assert any("Content Security Policy" in p or "ContentSecurityPolicy" in p for p in cdp.problems()), \
                cdp.problems()
            cdp.events.clear()

            cdp.open(f"{base}/helpdesk")  # the iframe URL in a plain iframe, as a helpdesk embeds it
            time.sleep(0.2)
            framed = cdp.send("Runtime.evaluate", returnByValue=True, expression=(
                "document.getElementById('panel').contentDocument.body.innerText"))["result"].get("value") or ""
            assert cdp.problems() == [] and "OP-1042" in framed and "Ana Lima" in framed, (cdp.problems(), framed)
            cdp.events.clear()

            cdp.open(panel_url)
            time.sleep(0.2)  # let late console or CSP reports arrive
            page = cdp.send("Runtime.evaluate", returnByValue=True, expression="""JSON.stringify({
                width: innerWidth, scroll: document.documentElement.scrollWidth,
                height: Math.ceil(document.querySelector('main').getBoundingClientRect().bottom),
                styled: getComputedStyle(document.body).backgroundColor,
                badges: [...document.querySelectorAll('.badge')].map(b => b.className + ' ' + b.innerText),
                links: [...document.querySelectorAll('a.open')].map(a => a.target + ' ' + a.rel),
                text: document.body.innerText})""")["result"]["value"]
            layout = json.loads(page)
            assert cdp.problems() == []
            assert layout["width"] == WIDTH
            assert layout["scroll"] <= WIDTH, f"horizontal overflow: {layout['scroll']} px in {WIDTH} px"
            assert layout["styled"] == "rgb(246, 247, 249)"  # the stylesheet loaded under the CSP
            assert layout["badges"] == ["badge tone-green Approved", "badge tone-amber Waiting for brand",
                                        "badge tone-red Denied"]
            assert layout["links"] == ["_blank noopener noreferrer"] * 3
            assert layout["text"].index("OP-1042") < layout["text"].index("OP-1057") < layout["text"].index("OP-0988")

            cdp.send("Emulation.setDeviceMetricsOverride", width=WIDTH, height=min(layout["height"], 2000),
                     deviceScaleFactor=2, mobile=False)
            shot = cdp.send("Page.captureScreenshot", format="png")["data"]
            SCREENSHOT.parent.mkdir(exist_ok=True)
            SCREENSHOT.write_bytes(base64.b64decode(shot))
        finally:
            cdp.close()
