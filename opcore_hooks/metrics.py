"""``GET /metrics``: the whole deployment's figures in Prometheus text format (CONTRACT.md, "Operations").

Every worker on every machine writes its counters to Redis as part of the Redis steps it takes
anyway (the ingress's accept script counts events, the ledger's finish script counts deliveries
and the claim-to-ticket histogram), so one scrape of any web process reads the deployment's
figures, not that process's. This module only reads them, at scrape time, and hands them to
the official ``prometheus_client`` as a custom collector: the text format is its job.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from redis.exceptions import RedisError

from .delivery.ledger import LATENCY_BUCKETS
from .events import BODY_MODELS
from .replication import replication_status

if TYPE_CHECKING:
    from .host import Host

#: Topics are labels: anything opcore does not act on counts as "other", so a sender cannot
#: grow the label set without bound.
TOPICS = frozenset(BODY_MODELS)

#: (kind, outcome) of each delivery counter the engine keeps (``Delivery.stats``).
_DELIVERIES = {("create", "done"): "tickets", ("create", "adopted"): "adopted", ("create", "dead"): "dead_create",
               ("finish", "done"): "finishes", ("finish", "dead"): "dead_finish",
               ("note", "done"): "notes", ("note", "adopted"): "notes_adopted", ("note", "dead"): "dead_note"}


def topic_label(topic: str | None) -> str:
    return topic if topic in TOPICS else "other"


class Metrics:
    """The deployment's counters: written by ``count_event``, read by ``render``."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.events_key = host.key("metrics", "events")
        #: Work refused or held back because replicas did not confirm a write, by where.
        self.refusals_key = host.key("metrics", "replication")
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def count_event(self, topic: str | None, outcome: str) -> None:
        """Count an event the ingress ignored or refused (accepted and duplicate events are
        counted by the accept script itself)."""
        self.host.redis.hincrby(self.events_key, f"{topic_label(topic)}|{outcome}", 1)

    def count_refusal(self, where: str, by: int = 1) -> None:
        """Count work a missing replica confirmation held back (``ingress``, ``delivery``,
        ``settings``) or a worker's recovery on a new primary; a count lost to Redis is no matter."""
        try:
            self.host.redis.hincrby(self.refusals_key, where, by)
        except RedisError:
            pass

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # -- the prometheus_client collector protocol --------------------------------------------
    def collect(self) -> Iterator[Metric]:
        host = self.host
        yield self._events()
        deliveries = CounterMetricFamily("opcore_deliveries", "Delivery work that ended, once per piece of work "
                                         "however many attempts it took.", labels=["plugin", "kind", "outcome"])
        limited = CounterMetricFamily("opcore_rate_limited", "Rate-limit answers (429 and alike) from the helpdesk.",
                                      labels=["plugin"])
        latency = HistogramMetricFamily("opcore_claim_to_ticket_seconds", "From the ingress accepting a claim to "
                                        "its ticket existing in the helpdesk.", labels=["plugin"])
        parked = GaugeMetricFamily("opcore_parked_messages", "Work held while a store's credentials are rejected.",
                                   labels=["plugin"])
        stores = GaugeMetricFamily("opcore_stores", "Stores that configured the helpdesk, by credential health.",
                                   labels=["plugin", "credentials"])
        invalid = GaugeMetricFamily("opcore_store_credentials_invalid", "1 for each store whose helpdesk rejected "
                                    "its credentials (its work is parked until valid ones are saved).",
                                    labels=["plugin", "store"])
        for name, delivery in sorted(host.deliveries.items()):
            stats = delivery.stats()
            for (kind, outcome), stat in _DELIVERIES.items():
                deliveries.add_metric([name, kind, outcome], stats.get(stat, 0))
            limited.add_metric([name], stats.get("rate_limited", 0))
            buckets, total = self._histogram(delivery.ledger.latency_key)
            latency.add_metric([name], buckets, total)
            health = delivery.store_health()
            parked.add_metric([name], sum(h.parked for h in health))
            states = Counter(h.credentials for h in health)
            for state in ("valid", "invalid", "unchecked"):
                stores.add_metric([name, state], states.get(state, 0))
            for h in health:
                if h.credentials == "invalid":
                    invalid.add_metric([name, h.store_id], 1)
        yield from (deliveries, limited, latency, parked, stores, invalid)
        yield self._dead_letters()
        yield from self._queues()
        yield from self._replication()

    def _replication(self) -> Iterator[Metric]:
        """The replicas the primary has and how far behind they are, what the deployment requires,
        and the work held back or recovered for want of them (docs/OPERATIONS.md, "Redis")."""
        host = self.host
        required = GaugeMetricFamily("opcore_redis_replicas_required", "Replicas that must confirm a write "
                                     "(OPCORE_REDIS_REPLICAS) before opcore promises or acts on it.")
        required.add_metric([], host.replication.required)
        yield required
        status = replication_status(host.redis)
        if status is not None:
            in_sync = GaugeMetricFamily("opcore_redis_replicas_in_sync", "Replicas online whose last "
                                        "acknowledgement is at most a second old.")
            in_sync.add_metric([], status.in_sync)
            lag = GaugeMetricFamily("opcore_redis_replica_lag_seconds", "Seconds since the most lagging replica "
                                    "acknowledged the primary's stream.")
            lag.add_metric([], status.max_lag_seconds)
            behind = GaugeMetricFamily("opcore_redis_replica_lag_bytes", "Bytes of the primary's stream the most "
                                       "lagging replica has not acknowledged.")
            behind.add_metric([], status.max_lag_bytes)
            yield from (in_sync, lag, behind)
        refusals = CounterMetricFamily("opcore_replication_events", "Work held back because replicas did not "
                                       "confirm a write (ingress: 503s; delivery: retried; settings: 503s), and "
                                       "a worker's recovery after a new primary (primary_changes; messages "
                                       "handed_back, resent or reregistered).", labels=["what"])
        for field, value in sorted(host.redis.hgetall(self.refusals_key).items()):
            refusals.add_metric([field.decode()], int(value))
        yield refusals

    def _events(self) -> Metric:
        family = CounterMetricFamily("opcore_events", "Webhook events by topic and what the ingress did with them.",
                                     labels=["topic", "outcome"])
        for field, value in sorted(self.host.redis.hgetall(self.events_key).items()):
            topic, _, outcome = field.decode().partition("|")
            family.add_metric([topic, outcome], int(value))
        return family

    def _histogram(self, key: str) -> tuple[list[tuple[str, float]], float]:
        raw = {k.decode(): v for k, v in self.host.redis.hgetall(key).items()}
        cumulative, buckets = 0, []
        for index, bound in enumerate(LATENCY_BUCKETS):
            cumulative += int(raw.get(str(index), 0))
            buckets.append((repr(bound), cumulative))
        buckets.append(("+Inf", int(raw.get("count", 0))))
        return buckets, float(raw.get("sum", 0.0))

    def _dead_letters(self) -> Metric:
        family = GaugeMetricFamily("opcore_dead_letters", "Work that failed for good and waits for an operator "
                                   "(opcore dead-letters list/replay); 'opcore' is the host's own.", labels=["plugin"])
        counts = Counter({name: 0 for name in ("opcore", *self.host.deliveries)})
        for ident in self.host.redis.zrange(self.host.dead_letters.index, 0, -1):
            counts[ident.decode().split(":", 1)[0].split(".", 1)[0]] += 1
        for plugin, count in sorted(counts.items()):
            family.add_metric([plugin], count)
        return family

    def _queues(self) -> Iterator[Metric]:
        """Messages in each Dramatiq queue (waiting, delayed or in progress), and how long the
        oldest waiting one has waited."""
        broker, redis = self.host.broker, self.host.redis
        messages = GaugeMetricFamily("opcore_queue_messages", "Messages in the queue, waiting or in progress.",
                                     labels=["queue"])
        oldest = GaugeMetricFamily("opcore_queue_oldest_message_age_seconds", "Age of the oldest message waiting "
                                   "in the queue (0 when none waits).", labels=["queue"])
        names = sorted({q for name in broker.get_declared_queues() for q in (name, f"{name}.DQ")})
        pipe = redis.pipeline(transaction=False)
        for name in names:
            pipe.hlen(f"{broker.namespace}:{name}.msgs")
            pipe.lindex(f"{broker.namespace}:{name}", 0)
        replies = pipe.execute()
        now = time.time()
        for name, count, head in zip(names, replies[::2], replies[1::2], strict=True):
            messages.add_metric([name], count)
            if name.endswith(".DQ"):
                continue  # delayed on purpose: their age says nothing about a backlog
            age = 0.0
            if head is not None:
                raw = redis.hget(f"{broker.namespace}:{name}.msgs", head)
                if raw:  # a delayed message waits from its due time (eta), not from when it was sent
                    message = json.loads(raw)
                    since = max(message.get("message_timestamp", 0), message.get("options", {}).get("eta", 0))
                    age = max(0.0, now - (since or now * 1000) / 1000)
            oldest.add_metric([name], age)
        yield messages
        yield oldest
