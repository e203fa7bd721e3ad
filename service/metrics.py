"""Prometheus metrics of the web process.

One process, the default registry, for now. Several web or worker processes behind one
scrape need multiprocess mode or a port each: that choice belongs with the deploy kit.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response

DELIVERIES = Counter(
    "codat_webhook_deliveries",
    "Webhook deliveries by outcome, rejection reason and event type.",
    ["outcome", "reason", "event_type"],
)
ACK_SECONDS = Histogram(
    "codat_webhook_ack_seconds",
    "Time from a delivery's body being read to its answer.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 5.0, 10.0),
)

_delivery_counters: dict[tuple[str, str, str], Any] = {}


def count_delivery(outcome: str, reason: str, event_type: str) -> None:
    # labels() takes a lock and builds its key on every call; the label sets are few and fixed
    # (event_type is a catalogue name or "unknown"), so each child is looked up once.
    key = (outcome, reason, event_type)
    counter = _delivery_counters.get(key)
    if counter is None:
        counter = _delivery_counters[key] = DELIVERIES.labels(*key)
    counter.inc()


async def metrics(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
