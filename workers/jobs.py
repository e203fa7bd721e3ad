"""The one arq job: a normalised Codat event, routed by its type."""

from __future__ import annotations

from typing import Any

import structlog

from service.events import CONNECTION_EVENTS, RATE_LIMIT_EVENTS, SYNC_EVENTS, Event

log = structlog.get_logger("workers.jobs")


def route_of(event: Event) -> str:
    if event.event_type in CONNECTION_EVENTS:
        return "connection"
    if event.event_type in SYNC_EVENTS:
        return "sync"
    if event.event_type in RATE_LIMIT_EVENTS:
        return "rate_limit"
    return "recorded" if event.known else "unknown"


async def process_event(ctx: dict[str, Any], record: dict[str, Any]) -> str:
    event = Event.from_dict(record)
    structlog.contextvars.bind_contextvars(
        webhook_id=event.message_id,
        event_type=event.event_type,
        company_id=event.company_id,
        connection_id=event.connection_id,
        job_try=ctx.get("job_try"),
    )
    route = route_of(event)
    log.info("event.processed", route=route)
    return route
