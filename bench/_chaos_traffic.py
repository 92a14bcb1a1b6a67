"""The chaos run's load: Order Protection sending the plan's webhooks, and a widget reader (and attacker).

Both run as threads against ``opcore serve`` while the faults go on. The sender behaves as
Order Protection does (it redelivers on 503 and on connection errors), so an event it never
got accepted is a loss at the door; the widget reader counts what each kind of request was
answered, so the judge can tell a correct outage answer (503 JSON) from a crash.
"""

from __future__ import annotations

import concurrent.futures
import json
import random
import threading
import time
from typing import Any, Callable
from urllib.parse import quote, urlencode

import httpx

from bench._chaos_plan import Claim, Send, is_creation
from opcore_hooks.signing import sign

Checked = Callable[[httpx.Response, str], httpx.Response]  # scans an answer for secrets, hands it back


class Counter:
    """Thread-safe named counts, shared by the load threads and read by the judge."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[str, int] = {}

    def add(self, name: str, by: int = 1) -> None:
        with self.lock:
            self.values[name] = self.values.get(name, 0) + by

    def get(self, name: str) -> int:
        with self.lock:
            return self.values.get(name, 0)


class Sender:
    """Sends every planned event at its time, 16 at once, retrying each as Order Protection would.

    It records when each claim's creation was accepted (for the claim-to-ticket latency), how
    long each event took to be accepted, and which claims are out (for the widget reader).
    """

    def __init__(self, http: httpx.Client, sends: list[Send], claims: list[Claim], *, t0: float,
                 webhook_secret: str, timeout: float, stop: threading.Event, counter: Counter,
                 checked: Checked, notes: list[str]) -> None:
        self.http, self.sends, self.t0, self.timeout = http, sends, t0, timeout
        self.by_id = {c.claim_id: c for c in claims}
        self.headers = {"x-webhook-secret": webhook_secret, "content-type": "application/json"}
        self.stop, self.counter, self.checked, self.notes = stop, counter, checked, notes
        self.lock = threading.Lock()
        self.sent_claims: list[Claim] = []  # claims whose creation is out, accepted or not
        self.ingress_latency: list[float] = []
        self.accepted_at: dict[str, float] = {}  # claim id -> wall time its creation was first accepted
        self.event_accepted_at: dict[str, float] = {}  # event id -> wall time it was first accepted (202)
        self.delivered = Counter()  # "done": deliveries finished, accepted or given up
        self.done = threading.Event()

    def run(self) -> None:
        """Thread body: submit each delivery at its planned time; ``done`` once every one has finished."""
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="chaos-send")
        futures = []
        for item in self.sends:
            wait = self.t0 + item.at - time.time()
            if wait > 0 and self.stop.wait(wait):
                break
            futures.append(pool.submit(self.deliver, item))
        concurrent.futures.wait(futures)
        pool.shutdown()
        self.done.set()

    def deliver(self, item: Send) -> None:
        """Post one event until it is answered for good (back-off 0.1 s to 2 s), or count it failed."""
        payload = json.dumps(item.event).encode()
        first = time.monotonic()
        deadline = first + max(60.0, self.timeout)
        delay = 0.1
        while not self.stop.is_set() and time.monotonic() < deadline:
            if self._post(item, payload, first):
                break
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        else:
            self.counter.add("failed")
        self.delivered.add("done")
        if is_creation(item.event):
            with self.lock:
                self.sent_claims.append(self.by_id[item.claim_id])

    def _post(self, item: Send, payload: bytes, first: float) -> bool:
        """One attempt; True when Order Protection would stop redelivering (accepted, duplicate or refused)."""
        try:
            answer = self.http.post("/webhooks/orderprotection", content=payload, headers=self.headers)
        except httpx.HTTPError:
            self.counter.add("send_retries")
            return False
        self.checked(answer, "POST /webhooks/orderprotection")
        if answer.status_code in (200, 202):
            if answer.status_code == 202:
                self.counter.add("accepted")
                with self.lock:
                    self.event_accepted_at.setdefault(item.event["id"], time.time())
            else:
                self.counter.add("duplicate" if answer.json().get("status") == "duplicate" else "ignored")
            with self.lock:
                self.ingress_latency.append(time.monotonic() - first)
                if is_creation(item.event):
                    self.accepted_at.setdefault(item.claim_id, time.time())
            return True
        if answer.status_code < 500:
            self.counter.add("refused")
            self.notes.append(f"event {item.event['id']} refused: {answer.status_code} {answer.text[:200]}")
            return True
        self.counter.add("send_retries")
        return False

    def random_sent_claim(self, rng: random.Random) -> Claim | None:
        with self.lock:
            return rng.choice(self.sent_claims) if self.sent_claims else None


def _tamper(header: str) -> str:
    """The same header with the MAC's last hex digit changed."""
    return header[:-1] + ("1" if header[-1] != "1" else "2")


#: Widget counts with a fixed meaning; any other ``widget_*`` count is reported as it is.
_WIDGET_FIGURES = ("ok", "refused", "attack_accepted", "unavailable", "5xx", "outage_other")


def iframe_target(iframe_url: str, email: str) -> str:
    """The path and query a helpdesk's iframe asks for: the provisioned URL, ``{email}`` filled in."""
    filled = iframe_url.replace("{email}", quote(email, safe=""))
    return filled[filled.index("/widgets/"):]


class WidgetReader:
    """Loads a panel every 0.25 s for a customer already sent, half of them through the store's
    iframe URL and half signed; one request in four is an attack.

    Attacks (unsigned, tampered MAC, another store's secret, expired by 301 s, signed for another
    query; another store's iframe token, a tampered token) must be answered 401. A 5xx while
    Redis is away (or reconnecting) must be a 503 with a JSON error; any other 5xx is a failure.
    """

    def __init__(self, serve_url: str, seed: int, store_ids: list[str], signing: dict[str, str],
                 iframes: dict[str, str], sender: Sender, *, redis_unsettled: Callable[[], bool],
                 stop: threading.Event, counter: Counter, checked: Checked, helpdesk_of: dict[str, str]) -> None:
        self.serve_url, self.store_ids, self.signing, self.sender = serve_url, store_ids, signing, sender
        self.iframes = iframes
        self.helpdesk_of = helpdesk_of
        self.redis_unsettled, self.stop, self.counter, self.checked = redis_unsettled, stop, counter, checked
        self.rng = random.Random(seed + 1)

    def run(self) -> None:
        """Thread body, until ``stop``."""
        client = httpx.Client(base_url=self.serve_url, timeout=10)
        while not self.stop.wait(0.25):
            claim = self.sender.random_sent_claim(self.rng)
            if claim is None:
                continue
            if self.rng.random() < 0.5:
                attack, target, headers = self._framed(claim)
            else:
                target = f"/widgets/{self.helpdesk_of[claim.store_id]}/{claim.store_id}?{urlencode({'email': claim.email})}"
                attack, headers = self._headers(claim, target)
            try:
                answer = self.checked(client.get(target, headers=headers), "GET widget")
            except httpx.HTTPError:
                self.counter.add("widget_transport_error")
                continue
            self._count(attack, answer)
        client.close()

    def _framed(self, claim: Claim) -> tuple[bool, str, dict[str, str]]:
        """(is it an attack, the target, the headers) for the iframe way in: no custom header at all."""
        wrng, store = self.rng, claim.store_id
        target = iframe_target(self.iframes[store], claim.email)
        attack = wrng.random() < 0.25
        if attack:
            token = target.split("token=", 1)[1].split("&", 1)[0]
            other = wrng.choice([s for s in self.store_ids if s != store] or self.store_ids)
            forged = {"token_other_store": iframe_target(self.iframes[other], claim.email).split("token=", 1)[1]
                      .split("&", 1)[0],
                      "token_tampered": token[:-1] + ("A" if token[-1] != "A" else "B")}[
                wrng.choice(["token_other_store", "token_tampered"])]
            target = target.replace(token, forged)
        else:
            self.counter.add("widget_iframe_requests")
        return attack, target, {"accept": wrng.choice(["application/json", "text/html"])}

    def _headers(self, claim: Claim, target: str) -> tuple[bool, dict[str, str]]:
        """(is it an attack, the request headers): a good signature, or one of five bad ones."""
        wrng, store, now = self.rng, claim.store_id, int(time.time())
        attack = wrng.random() < 0.25
        if attack:
            kind = wrng.choice(["unsigned", "tampered", "other_store", "expired", "other_query"])
            other = wrng.choice([s for s in self.store_ids if s != store] or self.store_ids)
            header = {
                "unsigned": None,
                "tampered": _tamper(sign(self.signing[store], target, now)),
                "other_store": sign(self.signing[other], target, now),
                "expired": sign(self.signing[store], target, now - 301),
                "other_query": sign(self.signing[store], f"/widgets/{self.helpdesk_of[store]}/{store}"
                                                         "?email=someone%40example.com", now),
            }[kind]
        else:
            header = sign(self.signing[store], target, now)
        headers = {"accept": wrng.choice(["application/json", "text/html"])}
        if header:
            headers["X-OP-Signature"] = header
        return attack, headers

    def _count(self, attack: bool, answer: httpx.Response) -> None:
        status = answer.status_code
        if attack:
            self.counter.add("widget_refused" if status == 401 else "widget_attack_accepted"
                             if status < 300 else f"widget_attack_{status}")
        elif status == 200:
            self.counter.add("widget_ok")
        elif status >= 500 and self.redis_unsettled():
            json_error = answer.headers.get("content-type", "").startswith("application/json")
            self.counter.add("widget_unavailable" if status == 503 and json_error else "widget_outage_other")
            if not (status == 503 and json_error):
                self.counter.add(f"widget_outage_{status}")
        elif status >= 500:
            self.counter.add("widget_5xx")
            self.counter.add(f"widget_{status}")
        else:
            self.counter.add(f"widget_{status}")

    @staticmethod
    def figures(counter: Counter) -> dict[str, Any]:
        """The widget counts for the result: the fixed figures first, then every other ``widget_*`` count."""
        fixed = {name: counter.get(f"widget_{name}") for name in _WIDGET_FIGURES}
        others = {k.removeprefix("widget_"): v for k, v in counter.values.items()
                  if k.startswith("widget_") and k.removeprefix("widget_") not in _WIDGET_FIGURES}
        return {**fixed, **others}
