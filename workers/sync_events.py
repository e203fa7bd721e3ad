"""Sync events: each data type's outcome kept as the company's latest (service.stores.syncs), error
statuses logged at error level under one event name (`sync.failed`) for alerting.

A job the worker runs hands its outcomes to the worker, which keeps them in the same script call
that ends the job or sends it back (workers.job.Ending): no round trip of their own. The lines
are logged once that call has answered, so they come after the job's `event.processed` line;
if it failed or its answer was lost, they are logged all the same, `stale` null."""

from __future__ import annotations

import contextvars
import functools
from typing import Any

import structlog

from service.core.clock import iso, now_ms
from service.core.events import Event
from service.stores.syncs import SyncStore
from workers.job import Ending
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


async def handle(syncs: SyncStore, event: Event, ending: Ending | None = None) -> str:
    """Each data type's outcome kept (with the job's end when the worker runs it: `ending`),
    and logged once it is known whether it was kept (`stale` when a newer one, or this one, was
    kept already)."""
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
        keep = syncs.keep(event.company_id, data_type, at, entry, _lifecycle(event, item))
        if ending is not None:
            # told in the job's context (its log context bound), from the worker's finish
            told = functools.partial(contextvars.copy_context().run, _told, data_type, status, item.get("connectionId"))
            ending.syncs.append((keep, told))
        else:
            _told(data_type, status, item.get("connectionId"), await syncs.write(keep))
    return "recorded"


def _told(data_type: str, status: str, connection_id: Any, kept: bool | None) -> None:
    """`kept` None: not known (the job's end may not have been written): `stale` null."""
    SYNC_OUTCOMES.labels(data_type, status).inc()
    stale = None if kept is None else not kept
    fields = {"data_type": data_type, "status": status, "connection_id": connection_id, "stale": stale}
    if status in ERROR_STATUSES:
        log.error("sync.failed", **fields)
    else:
        log.info("sync.completed" if status == "Complete" else "sync.status", **fields)
