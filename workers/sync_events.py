"""Sync events: each data type's outcome kept as the company's latest (service.syncs), error
statuses logged at error level under one event name (`sync.failed`) for alerting."""

from __future__ import annotations

from typing import Any

import structlog

from service.connections import now_ms
from service.events import Event
from service.metrics import SYNC_OUTCOMES
from service.syncs import SyncStore

log = structlog.get_logger("workers.sync_events")

ERROR_STATUSES = frozenset({
    "FetchError", "MapError", "InternalError", "ProcessingError", "ValidationError", "AuthError",
    "RateLimitError", "PermissionsError", "PrerequisiteNotMet",
})

def outcomes(event: Event) -> list[dict[str, Any]]:
    """(data type, status, connection, dataset) for each data type the event reports on."""
    body = event.body
    if not event.legacy:
        payload = body.get("payload")
        items = payload.get("dataTypes") if isinstance(payload, dict) else None
        return [
            {"dataType": item.get("dataType"), "status": item.get("status"),
             "connectionId": item.get("connectionId"), "recordsModified": item.get("recordsModified")}
            for item in (items if isinstance(items, list) else []) if isinstance(item, dict)
        ]
    data = body.get("Data")
    data = data if isinstance(data, dict) else {}
    if event.event_type == "NewCompanySynchronized" or not data.get("dataType"):
        return []
    status = data.get("datasetStatus") if event.event_type == "DataSyncStatusChangedToError" else "Complete"
    return [{"dataType": data.get("dataType"), "status": status or "InternalError",
             "connectionId": event.connection_id, "datasetId": data.get("datasetId")}]


async def handle(ctx: dict[str, Any], event: Event) -> str:
    syncs: SyncStore = ctx["syncs"]
    if event.company_id is None:
        log.warning("sync.event_without_company")
        return "ignored"
    items = outcomes(event)
    if not items:
        log.info("sync.company_synchronized" if event.event_type == "NewCompanySynchronized"
                 else "sync.event_without_data_types")
        return "recorded"
    at = event.generated_ms or event.received_at_ms
    for item in items:
        data_type, status = item["dataType"], item["status"]
        if not isinstance(data_type, str) or not isinstance(status, str):
            log.warning("sync.unreadable_data_type", item=item)
            continue
        entry = {**item, "eventType": event.event_type, "recordedAt": now_ms()}
        newer = await syncs.record(event.company_id, data_type, at, entry)
        SYNC_OUTCOMES.labels(data_type, status).inc()
        fields = {"data_type": data_type, "status": status, "connection_id": item.get("connectionId"),
                  "stale": not newer}
        if status in ERROR_STATUSES:
            log.error("sync.failed", **fields)
        else:
            log.info("sync.completed" if status == "Complete" else "sync.status", **fields)
    return "recorded"
