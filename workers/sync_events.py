"""Sync events: each data type's outcome kept as the company's latest (service.stores.syncs), error
statuses logged at error level under one event name (`sync.failed`) for alerting."""

from __future__ import annotations

from typing import Any

import structlog

from service.core.clock import iso, now_ms
from service.core.events import Event
from service.stores.syncs import SyncStore
from workers.metrics import SYNC_OUTCOMES

log = structlog.get_logger(__name__)

ERROR_STATUSES = frozenset(
    {
        "FetchError",
        "MapError",
        "InternalError",
        "ProcessingError",
        "ValidationError",
        "AuthError",
        "RateLimitError",
        "PermissionsError",
        "PrerequisiteNotMet",
    }
)


def _lifecycle(event: Event, item: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """sync.completed / sync.failed, for the outbox; other statuses are not an outcome."""
    status = item["status"]
    kind = "sync.completed" if status == "Complete" else "sync.failed" if status in ERROR_STATUSES else None
    if kind is None:
        return None
    fields = {
        "companyId": event.company_id,
        "connectionId": item.get("connectionId"),
        "dataType": item["dataType"],
        "status": status,
        "datasetId": item.get("datasetId"),
        "occurredAt": event.generated_date or iso(event.received_at_ms),
        "webhookId": event.message_id,
        "codatEventType": event.event_type,
    }
    return kind, {k: v for k, v in fields.items() if v is not None}


async def handle(syncs: SyncStore, event: Event) -> str:
    if event.company_id is None:
        log.warning("sync.event_without_company")
        return "ignored"
    items = event.sync_outcomes
    if not items:
        log.info(
            "sync.company_synchronized"
            if event.event_type == "NewCompanySynchronized"
            else "sync.event_without_data_types"
        )
        return "recorded"
    at = event.generated_ms or event.received_at_ms
    for item in items:
        data_type, status = item["dataType"], item["status"]
        if not isinstance(data_type, str) or not isinstance(status, str):
            log.warning("sync.unreadable_data_type", item=item)
            continue
        entry = {**item, "eventType": event.event_type, "recordedAt": now_ms(), "codatEventId": event.codat_id}
        newer = await syncs.record(event.company_id, data_type, at, entry, _lifecycle(event, item))
        SYNC_OUTCOMES.labels(data_type, status).inc()
        fields = {
            "data_type": data_type,
            "status": status,
            "connection_id": item.get("connectionId"),
            "stale": not newer,
        }
        if status in ERROR_STATUSES:
            log.error("sync.failed", **fields)
        else:
            log.info("sync.completed" if status == "Complete" else "sync.status", **fields)
    return "recorded"
