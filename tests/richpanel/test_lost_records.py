"""A claim's delivery record lost to a Redis failover: the finish still reaches its ticket.

A failover can promote a replica that never got a ticket's id (with OPCORE_REDIS_REPLICAS=0,
or a write between two confirmations). The ticket exists in Richpanel; the approval that comes
next finds no id. The finish is not left waiting forever: a worker's ticker looks for the ticket
at Richpanel, adopts it, and snoozes it.
"""

from __future__ import annotations

import time

from opcore_hooks.delivery.engine import FINISH_LOOKUP_SECONDS, FINISH_LOOKUPS
from opcore_hooks.testing import approved, claim_created, drain, wait_for

from .test_delivery import STORE, delivering, post, requests, ticket_of, tickets


def test_a_finish_whose_ticket_id_was_lost_finds_the_ticket_and_snoozes_it(make_host, run_worker, sandbox,
                                                                            monkeypatch):
    host, worker, sandbox = delivering(make_host, run_worker, sandbox, monkeypatch)
    delivery = host.delivery("richpanel")
    event = claim_created()
    claim_id = event["body"]["claim_id"]
    post(host, event)
    wait_for(lambda: ticket_of(host, claim_id))
    drain(host, worker)
    [ticket] = tickets(sandbox)
    host.redis.hdel(delivery.ledger.claim_key(STORE, claim_id), "ticket_id", "pending")  # the failover's loss

    post(host, approved(claim_id))
    drain(host, worker)
    assert requests(sandbox, "PUT", "/snooze") == []  # no id yet: nothing sent blindly
    assert delivery.sweep_finish_waits(now=time.time()) == 0  # not due before FINISH_LOOKUP_SECONDS

    assert delivery.sweep_finish_waits(now=time.time() + FINISH_LOOKUP_SECONDS + 1) == 1
    wait_for(lambda: requests(sandbox, "PUT", "/snooze"))
    drain(host, worker)
    assert ticket_of(host, claim_id) == ticket["id"]  # adopted, not created again
    assert len(tickets(sandbox)) == 1
    assert [r["path"] for r in requests(sandbox, "PUT", "/snooze")] == [f"/v1/tickets/{ticket['id']}/snooze"]
    assert delivery.stats()["adopted"] == 1


def test_an_approval_before_its_claim_needs_no_lookup_when_the_claim_comes(make_host, run_worker, sandbox,
                                                                           monkeypatch):
    host, worker, sandbox = delivering(make_host, run_worker, sandbox, monkeypatch)
    delivery = host.delivery("richpanel")
    event = claim_created()
    claim_id = event["body"]["claim_id"]
    post(host, approved(claim_id))
    post(host, event)
    wait_for(lambda: requests(sandbox, "PUT", "/snooze"))
    drain(host, worker)
    sandbox.state.requests.clear()

    # The create sent the finish: nothing is left for a worker's ticker to send a minute later.
    assert delivery.sweep_finish_waits(now=time.time() + FINISH_LOOKUP_SECONDS + 1) == 0
    assert host.redis.zcard(delivery.finish_waits_key) == 0
    drain(host, worker)
    assert requests(sandbox) == []


def test_a_finish_for_a_claim_that_never_arrives_becomes_a_dead_letter(make_host, run_worker, sandbox,
                                                                       monkeypatch):
    host, worker, sandbox = delivering(make_host, run_worker, sandbox, monkeypatch)
    delivery = host.delivery("richpanel")
    monkeypatch.setattr(type(delivery), "lookup_delay", staticmethod(lambda lookup: 0.05))
    post(host, approved("claim-never-created"))
    drain(host, worker)
    assert delivery.sweep_finish_waits(now=time.time() + FINISH_LOOKUP_SECONDS + 1) == 1
    wait_for(lambda: host.dead_letters.list())
    drain(host, worker)
    [dead] = host.dead_letters.list()
    assert dead.claim_id == "claim-never-created"
    assert f"after {FINISH_LOOKUPS} lookups" in dead.reason
    assert requests(sandbox) == []  # without its claim there is nothing to look for by


def test_delivery_goes_on_when_redis_forgets_every_script(make_host, run_worker, sandbox, monkeypatch):
    """A promoted replica or a restarted Redis knows none of the scripts opcore loaded: the
    ingress's accept, the read model's deferred writes, the ledger's, the broker's and
    Dramatiq's own are loaded again where they are missing, with nothing failed or lost."""
    host, worker, sandbox = delivering(make_host, run_worker, sandbox, monkeypatch)
    first, second = claim_created(claim_id="claim-before-flush"), claim_created(claim_id="claim-after-flush")
    post(host, first)
    wait_for(lambda: ticket_of(host, first["body"]["claim_id"]))
    drain(host, worker)
    host.redis.script_flush()
    post(host, second, approved(second["body"]["claim_id"]))
    wait_for(lambda: requests(sandbox, "PUT", "/snooze"))
    drain(host, worker)
    assert len(tickets(sandbox)) == 2
    assert host.dead_letters.list() == []
    assert host.readmodel.claim_identity(STORE, second["body"]["claim_id"]) is not None  # its deferred write too
    stats = host.delivery("richpanel").stats()
    assert (stats["tickets"], stats["finishes"], stats.get("dead_letters", 0)) == (2, 1, 0)
