"""Prometheus metrics of the web process, and the service-wide gauges it reads from Redis.

Every process serves its own: a web process at GET /metrics, a worker on WORKER_METRICS_PORT
(workers.metrics).
Prometheus scrapes each pod (or container), and sums across them. That is chosen over
prometheus_client's multiprocess mode because the unit of deployment is one process per
container: multiprocess mode needs a directory shared by the processes of one host, wiped at
each start, and handles gauges only with per-process modes. A metrics port per process needs none
of that, and it scales the same way the processes do (more replicas).

What is true of the whole service rather than of one process (queue depth, the age of the oldest
job that is due, dead letters, whether a worker is polling, whether Codat calls are paused) is
read from Redis when a web process is scraped, through the stores that own those keys
(service.stores.activity, the reading the console's overview shows; service.stores.reconcile).
Every web replica reports the same values, so alert on max() across them.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from service.stores import activity, delivery_health
from service.stores.gaps import GapStore
from service.stores.reconcile import ReconcileStore
from service.web.deps import WebDeps

# Web
DELIVERIES = Counter(
    "codat_webhook_deliveries",
    "Webhook deliveries by outcome (accepted, duplicate, rejected, malformed, too_large, unavailable), "
    "rejection reason and event type (a catalogue name, or unknown).",
    ["outcome", "reason", "event_type"],
)
ACK_SECONDS = Histogram(
    "codat_webhook_ack_seconds",
    "Time from a delivery's arrival to its answer.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 5.0, 10.0),
)
REDIS_UP = Gauge("codat_redis_up", "1 if Redis answered the last scrape.")

# Read from Redis at each scrape. Without Redis there is no value to give: these are then left out
# of the scrape, so that a graph shows a gap and an alert on them sees no data, where a last value
# kept (or a 0) would claim an empty queue and no dead letters while nobody can tell.
SERVICE_STATE = {
    "codat_queue_depth": "Jobs in the queue, due now or deferred.",
    "codat_queue_oldest_job_age_seconds": "How long the oldest job that is due has waited.",
    "codat_dead_letters": "Dead letters waiting for a replay.",
    "codat_worker_polling": "1 while some worker's health check in Redis is fresh.",
    "codat_rate_limit_paused": "1 while outgoing Codat calls are paused.",
    "codat_reconcile_last_completed_timestamp_seconds": "When the last complete reconcile ended (absent: none yet).",
}


class ServiceState(Collector):
    """The service-wide gauges, as last read from Redis; none at all while Redis is away."""

    def __init__(self) -> None:
        self.values: dict[str, float] | None = None

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(name, help) for name, help in SERVICE_STATE.items()]

    def collect(self) -> list[GaugeMetricFamily]:
        values = self.values
        if values is None:
            return []
        return [
            GaugeMetricFamily(name, help, value=values[name]) for name, help in SERVICE_STATE.items() if name in values
        ]


STATE = ServiceState()
REGISTRY.register(STATE)

# Is Codat delivering? (issue 23; service.stores.delivery_health). Read from Redis at each scrape
# like the above, and absent likewise while Redis is away; a family never delivered has no series.
CONSUMER_PROBLEMS = ("missing", "disabled", "lacking_event_types", "duplicated")
DELIVERY_HEALTH = {
    "codat_webhook_last_accepted_timestamp_seconds": (
        "When a delivery of this family (connection, sync, other) was last answered 2xx.",
        ["family"],
    ),
    "codat_linked_connections": ("Connections whose reconciled status is Linked (counted by the delivery watch).", []),
    "codat_webhook_consumer_problem": (
        "1 while the consumer watch finds this problem with this service's Codat webhook consumer (missing, "
        "disabled, lacking_event_types, duplicated); absent without PUBLIC_WEBHOOK_URL or before the first check.",
        ["problem"],
    ),
    "codat_webhook_consumer_checked_timestamp_seconds": ("When the consumer watch last read Codat's consumers.", []),
    "codat_delivery_gaps_uncovered": (
        "Gaps in the last 14 days that Codat's retries do not cover: replay from the Portal (codat-webhooks gaps).",
        [],
    ),
}
SILENCE_THRESHOLD = Gauge(
    "codat_webhook_silence_threshold_seconds", "SILENCE_ALERT_SECONDS: how long without a delivery is silence."
)


class DeliveryHealth(Collector):
    def __init__(self) -> None:
        self.values: dict[str, list[tuple[list[str], float]]] | None = None

    def collect(self) -> list[GaugeMetricFamily]:
        values = self.values or {}
        families = []
        for name, (help, labels) in DELIVERY_HEALTH.items():
            family = GaugeMetricFamily(name, help, labels=labels)
            for label_values, value in values.get(name, []):
                family.add_metric(label_values, value)
            families.append(family)
        return families


HEALTH = DeliveryHealth()
REGISTRY.register(HEALTH)

_delivery_counters: dict[tuple[str, str, str], Any] = {}


def count_delivery(outcome: str, reason: str, event_type: str) -> None:
    # labels() takes a lock and builds its key on every call; the label sets are few and fixed
    # (event_type is a catalogue name or "unknown"), so each child is looked up once.
    key = (outcome, reason, event_type)
    counter = _delivery_counters.get(key)
    if counter is None:
        counter = _delivery_counters[key] = DELIVERIES.labels(*key)
    counter.inc()


async def read_service_state(state: dict[str, Any], reconciles: ReconcileStore) -> None:
    """`state`: service.stores.activity.service_state, what the console's overview shows too."""
    last = await reconciles.last()
    oldest = state["oldestDueAgeSeconds"]
    STATE.values = {
        **({"codat_reconcile_last_completed_timestamp_seconds": last["finishedAt"] / 1000} if last else {}),
        "codat_queue_depth": state["queueDepth"],
        "codat_queue_oldest_job_age_seconds": oldest if oldest is not None else 0.0,
        "codat_dead_letters": state["deadLetters"],
        "codat_worker_polling": 1 if state["workerPolling"] else 0,
        "codat_rate_limit_paused": 1 if state["rateLimitPaused"] else 0,
    }


async def read_delivery_health(redis: Redis, gap_store: GapStore, silence_seconds: int) -> None:
    now = int(time.time() * 1000)
    health = await delivery_health.snapshot(redis, silence_seconds * 1000, now=now)
    gaps = await gap_store.list(limit=500, now=now)
    horizon = now - 14 * 24 * 3600 * 1000
    values: dict[str, list[tuple[list[str], float]]] = {
        "codat_webhook_last_accepted_timestamp_seconds": [
            ([family], at / 1000) for family, at in sorted(health["lastAccepted"].items())
        ],
        "codat_delivery_gaps_uncovered": [
            ([], sum(1 for g in gaps if not g["coveredByRetries"] and (g["end"] or now) >= horizon))
        ],
    }
    if health["linked"] is not None:
        values["codat_linked_connections"] = [([], health["linked"]["count"])]
    report = health["consumer"]
    if report and report.get("url"):
        found = {problem["kind"] for problem in report.get("problems", [])}
        values["codat_webhook_consumer_problem"] = [([p], 1 if p in found else 0) for p in CONSUMER_PROBLEMS]
        values["codat_webhook_consumer_checked_timestamp_seconds"] = [([], report["checkedAt"] / 1000)]
    HEALTH.values = values


def metrics_endpoint(deps: WebDeps) -> Any:
    silence_seconds = deps.settings.silence_alert_seconds
    SILENCE_THRESHOLD.set(silence_seconds)

    async def metrics(request: Request) -> Response:
        try:
            await read_service_state(await activity.service_state(deps.redis), deps.reconciles)
            await read_delivery_health(deps.redis, deps.gaps, silence_seconds)
            REDIS_UP.set(1)
        except (RedisError, OSError):
            STATE.values = None  # absent, not stale: see SERVICE_STATE
            HEALTH.values = None
            REDIS_UP.set(0)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return metrics
