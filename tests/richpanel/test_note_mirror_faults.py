"""The note mirror under faults (a review's findings): lost wakes, notes dropped mid-send, parked
writers, dispatch delays, retention and pacing. Each test drives the engine to the edge it names."""

from __future__ import annotations

import time

import pytest
import redis as redis_lib

from opcore_hooks import Transient
from opcore_hooks.delivery.note_records import member as _member
from opcore_hooks.delivery.notes import NoteMirror
from opcore_hooks.testing import claim_created, drain, feed, message_created, wait_for
from plugins.richpanel import plugin, stores
from plugins.richpanel.helpdesk import Richpanel
from plugins.richpanel.store_config import SettingsUpdate

from .test_delivery import STORE, delivering, post, settle, tickets
from .test_note_mirror import notes_of, texts


def _ticketed(host, worker, sandbox):
    claim = claim_created()
    cid = claim["body"]["claim_id"]
    post(host, claim)
    settle(host, worker, lambda: tickets(sandbox))
    return cid


def test_a_message_whose_wake_was_lost_is_written_when_its_event_comes_again(mirror, monkeypatch):
    """_ENQUEUE commits, then wake() fails (Redis blip / worker killed): the dispatch retries the
    plugin, _ENQUEUE answers 'duplicate' and nobody ever wakes the writer."""
    host, worker, sandbox = mirror
    cid = _ticketed(host, worker, sandbox)
    real, failed = NoteMirror.wake, []

    def wake_fails_once(self, *a, **kw):
        if not failed:
            failed.append(1)
            raise redis_lib.ConnectionError("connection reset")
        return real(self, *a, **kw)

    monkeypatch.setattr(NoteMirror, "wake", wake_fails_once)
    post(host, message_created(cid, "never written", message_id="m1"))
    time.sleep(4)
    drain(host, worker)
    assert failed and host.delivery("richpanel").stats().get("note_duplicates") == 1  # the retry ran
    assert texts(sandbox) == ["never written"], "note stuck in the queue; no writer, no due-set entry"


def test_a_note_dropped_mid_send_does_not_wedge_the_claims_later_notes(mirror, monkeypatch):
    """5xx leaves .sending=m1; the store turns the mirror off (m1 'skipped', .sending kept); on again:
    _BEGIN does tonumber(nil)+hold on 'skipped' and every later note of the claim fails forever."""
    host, worker, sandbox = mirror
    cid = _ticketed(host, worker, sandbox)
    real = Richpanel.add_note

    def fail(self, call, ticket_id, note):
        raise Transient("502")

    monkeypatch.setattr(Richpanel, "add_note", fail)
    post(host, message_created(cid, "m1", message_id="m1"))
    notes = host.delivery("richpanel").notes
    wait_for(lambda: host.redis.hget(notes.records.notes_key(STORE, cid), ".sending"))
    stores.update(host, STORE, SettingsUpdate(mirror_messages=False))
    drain(host, worker)  # the retry finds the mirror off: m1 is dropped ('skipped')
    assert host.redis.hget(notes.records.notes_key(STORE, cid), "m:m1") == b"skipped"
    monkeypatch.setattr(Richpanel, "add_note", real)
    stores.update(host, STORE, SettingsUpdate(mirror_messages=True))
    post(host, message_created(cid, "m2 after the mirror came back", message_id="m2"))
    time.sleep(3)
    try:
        notes.write_notes(STORE, cid)
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"writer crashes: {exc!r}") from exc
    assert texts(sandbox) == ["m2 after the mirror came back"]


def test_dropped_notes_take_their_claim_out_of_the_due_set(mirror):
    host, worker, sandbox = mirror
    notes = host.delivery("richpanel").notes
    post(host, message_created("no-ticket-yet", "waits", message_id="m1"))
    drain(host, worker)
    stores.update(host, STORE, SettingsUpdate(mirror_messages=False))
    later = time.time() + 8 * 86_400
    assert notes.sweep(now=later) == 1
    drain(host, worker)  # the writer drops the note (mirror off)
    assert notes.sweep(now=later + 301) == 0, "stale member swept (and a writer sent) every 300 s forever"


def test_a_parked_claim_is_parked_once_not_at_every_sweep(mirror):
    host, worker, sandbox = mirror
    notes, delivery = host.delivery("richpanel").notes, host.delivery("richpanel")
    post(host, message_created("no-ticket-yet", "waits", message_id="m1"))
    drain(host, worker)
    stores.mark_invalid(host, STORE, "401")
    later = time.time() + 8 * 86_400
    for i in range(4):
        notes.sweep(now=later + i * 301)
        drain(host, worker)
    assert delivery.parked_count(STORE) <= 1, f"{delivery.parked_count(STORE)} parked entries for one claim"


def test_a_note_waits_for_an_earlier_dated_message_still_on_its_way_from_the_ingress(mirror):
    """Both reach the ingress within 2 s; the earlier-dated one is dispatched 2.5 s after the other
    (a backlog, the bulk lane): the ingress counted it, so the writer waits for it."""
    host, worker, sandbox = mirror
    cid = _ticketed(host, worker, sandbox)
    notes = host.delivery("richpanel").notes
    coming = host.messages_in_flight_key(STORE, cid)
    t0 = time.time()
    entry = {"claim_id": cid, "sender_type": "customer", "author_name": "Ana"}
    host.redis.sadd(coming, "event-a", "event-b")  # the ingress accepted both
    notes.add_note(STORE, {**entry, "key": "m:b", "message": "second", "created_at": t0 - 60, "received_at": t0})
    host.redis.srem(coming, "event-b")
    time.sleep(2.5)
    assert notes_of(sandbox) == []  # held for the one still coming
    notes.add_note(STORE, {**entry, "key": "m:a", "message": "first", "created_at": t0 - 120, "received_at": t0 + 1})
    host.redis.srem(coming, "event-a")
    settle(host, worker, lambda: len(notes_of(sandbox)) == 2)
    assert texts(sandbox) == ["first", "second"]


def test_a_dispatch_run_twice_releases_only_its_own_message(make_host, sandbox, monkeypatch):
    """After a failover lost a dispatch's ack, the worker runs it again: before, a second
    decrement of a count released the wait for another message still on its way, whose note then
    came after its successor's (bench/failover.py, stalled)."""
    host = make_host({"richpanel": plugin})  # no worker: dispatches run by hand
    monkeypatch.setenv("OPCORE_RICHPANEL_API_URL", sandbox.url)
    coming = host.messages_in_flight_key(STORE, "claim-1")
    first, second = message_created("claim-1", "first", message_id="m1"), message_created("claim-1", "second",
                                                                                          message_id="m2")
    post(host, first, second)
    feed(host, second)
    feed(host, second)  # the same dispatch again
    assert host.redis.smembers(coming) == {first["id"].encode()}  # the first is still awaited


def test_messages_arriving_through_the_ingress_are_counted_until_dispatched(make_host, run_worker, sandbox,
                                                                             monkeypatch):
    host = make_host({"richpanel": plugin})  # no worker yet: nothing is dispatched
    monkeypatch.setenv("OPCORE_RICHPANEL_API_URL", sandbox.url)
    coming = host.messages_in_flight_key(STORE, "claim-1")
    post(host, message_created("claim-1", "on its way", message_id="m1"),
         message_created("claim-1", "too", message_id="m2"), message_created("claim-1", "too", message_id="m2"))
    assert host.redis.scard(coming) == 3  # each accepted event, the one with a reused id included
    worker = run_worker(host)
    wait_for(lambda: not host.redis.exists(coming))
    drain(host, worker)


def test_messages_keep_the_claim_record_alive(make_host, run_worker, sandbox, monkeypatch):
    """Retention runs from the claim's *last event*, and a message is one: a claim whose
    conversation outlives the retention period keeps its ticket id, so its later notes go out."""
    host, worker, sandbox = delivering(make_host, run_worker, sandbox, monkeypatch, retention_days=8 / 86_400)
    stores.update(host, STORE, SettingsUpdate(mirror_messages=True))
    cid = _ticketed(host, worker, sandbox)
    time.sleep(5)
    post(host, message_created(cid, "at +5 s", message_id="m1"))
    settle(host, worker, lambda: notes_of(sandbox))
    time.sleep(5)  # 5 s after the claim's last event (m1), within the 8 s retention
    post(host, message_created(cid, "at +10 s", message_id="m2"))
    time.sleep(3)
    drain(host, worker)
    assert len(notes_of(sandbox)) == 2, "m2 waits for a ticket the record forgot (dead letter in 7 days)"
    assert host.redis.zscore(host.delivery("richpanel").notes.records.due_key, _member(STORE, cid)) is None


def test_a_note_refused_admission_books_no_reservation(mirror):
    host, worker, sandbox = mirror
    cid = _ticketed(host, worker, sandbox)
    delivery = host.delivery("richpanel")
    notes, pacer = delivery.notes, delivery.pacer
    scope = delivery.helpdesk.pacing_scope(delivery.store(STORE)[1])
    slots, _, _, sent = pacer.keys(scope)
    notes.add_note(STORE, {"key": "m:x", "claim_id": cid, "message": "x", "sender_type": None, "author_name": None,
                           "created_at": None, "received_at": time.time() - 10})
    host.redis.delete(slots)
    now = time.time()  # the quota was really spent (answers stamped now); no reservation is booked
    host.redis.zadd(sent, {f"s{i}": now for i in range(pacer.quota)})
    snap, _ = delivery.store(STORE)
    for _ in range(3):
        reply = notes.records.take(STORE, cid, delivery.helpdesk.settings_key(STORE), scope, snap, "tok",
                                   f"member-{_}", hold=2.0, in_flight_wait=30.0)
        assert reply[0] == b"wait"
    assert host.redis.zcard(slots) == 0, f"{host.redis.zcard(slots)} reservations booked by notes that never went"


@pytest.mark.parametrize("cache", ["warm", "cold"])
def test_a_released_writer_reads_the_fixed_credentials_and_writes(mirror, cache):
    """Credentials rejected, then fixed: the released writer must not trust this process's cached
    (invalid) settings and park again; it reads them afresh, as the engine's creates do."""
    host, worker, sandbox = mirror
    cid = _ticketed(host, worker, sandbox)
    delivery = host.delivery("richpanel")
    stores.mark_invalid(host, STORE, "401 from Richpanel")
    post(host, message_created(cid, "parked, then released", message_id="m1"))
    time.sleep(2.5)
    drain(host, worker)
    assert delivery.parked_count(STORE) == 1
    if cache == "cold":
        delivery.stores.forget()
    stores.update(host, STORE, SettingsUpdate(mirror_messages=True))  # key checked: valid again, parked released
    time.sleep(1)
    drain(host, worker)
    assert texts(sandbox) == ["parked, then released"], f"parked again: {delivery.parked_count(STORE)}"


def test_each_worker_runs_the_deadline_sweep_on_its_own(mirror, monkeypatch):
    from opcore_hooks.worker import Ticker

    host, worker, sandbox = mirror
    notes = host.delivery("richpanel").notes
    post(host, message_created("never-created", "lost claim", message_id="m1"))
    drain(host, worker)
    notes.deadline_seconds = 0.0  # as if 7 days went by
    monkeypatch.setattr(notes, "sweep", lambda real=notes.sweep: real(now=time.time() + 8 * 86_400))
    ticker = Ticker(host, interval=0.05)
    ticker.start()
    try:
        wait_for(lambda: host.dead_letters.list(claim_id="never-created"))
    finally:
        ticker.stopping.set()
    assert "had no ticket" in host.dead_letters.list(claim_id="never-created")[0].reason
