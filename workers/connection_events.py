"""Connection events drive each connection's state; its first link requests its initial sync.

- An event newer (by `generatedDate`) than the one behind the current state moves it; an older
  one is logged and dropped.
- Where the order cannot be decided (legacy events carry no date, a date that cannot be read,
  two events of the same instant that disagree), Codat's own answer to GET connection is the
  truth, as of now.
- The initial sync follows the connection's state, not the event that arrived last: once a
  connection has been seen linked for the first time (`connection.connected`, or a legacy
  PendingAuth -> Linked, however late or stale that delivery is), whenever it is Linked and its
  initial sync was never requested, it is requested once (workers.initial_sync: what Codat will
  not pull by itself), under the claim kept in service.stores.connections. This is checked after
  every connection event, so `disconnected`, `reconnected`, `connected` arriving in that order
  still sync once, and a claim left by a failed job is resolved by the next event or rerun.
- `connection.reconnected` re-links a connection that was linked before: it moves the state to
  Linked but is not a first link (that connection's first sync happened at its first link;
  Codat's own sync schedule carries on from there), so a connection this service only ever saw
  reconnected is not synced.
"""

from __future__ import annotations

import structlog

from service.core.clock import now_ms
from service.core.events import STATUSES, Event
from service.stores.connections import Applied
from workers.deps import Deps
from workers.initial_sync import claim_for, request_initial_sync
from workers.metrics import CONNECTION_STATUSES

log = structlog.get_logger(__name__)


async def handle(deps: Deps, event: Event, job_id: str) -> str:
    store, codat = deps.connections, deps.codat
    if not event.company_id or not event.connection_id:
        log.warning("connection.event_without_ids")
        return "ignored"
    ids = {"connection_id": event.connection_id, "company_id": event.company_id}
    # What every write of this event carries: for the first-link mark, the history and the
    # lifecycle event it may emit.
    told = {
        "first_link": event.first_link,
        "webhook_id": event.message_id,
        "company_name": event.company_name,
        # when Codat says, or else when it reached us: never the moment Codat was asked later
        "first_link_at_ms": event.generated_ms or event.received_at_ms,
    }
    # A Linked status may make the initial sync due: the apply then takes its claim in the same
    # call (a round trip fewer on every first link). Other statuses leave it to a separate claim
    # (a claim left behind is all they can find due), and with REDIS_MIN_REPLICAS wait for none.
    claim = claim_for(deps, job_id)
    status, at = event.claimed_status, event.generated_ms
    applied: Applied | None = None
    if status is not None and at is not None:
        applied = await store.apply(
            status=status,
            at_ms=at,
            event_type=event.event_type,
            claim=claim if status == "Linked" else None,
            **told,
            **ids,
        )
    if applied is None or applied.outcome == "tied":
        reason = applied.outcome if applied else "undecided"
        asked_at = now_ms()  # Codat's answer is the truth as of the moment it was asked
        truth = await codat.get_connection(event.company_id, event.connection_id)
        status = truth.get("status") if truth else "Deleted"
        if status not in STATUSES:
            log.error("connection.unreadable_status_from_codat", status=status)
            return "ignored"
        applied = await store.apply(
            status=status,
            at_ms=asked_at,
            event_type=event.event_type,
            authoritative=True,
            claim=claim if status == "Linked" else None,
            **told,
            **ids,
        )
        log.info("connection.status_from_codat", status=status, reason=reason)
    if applied.outcome == "stale":
        log.info("connection.stale_event", claimed_status=status, status=applied.status)
    else:
        _log_status(event, applied.status)
    # Whatever event caused the change, and even when it changed nothing (a late, stale
    # `connection.connected` still says "first linked"), the initial sync follows the state.
    if applied.initial_sync_due:
        return await request_initial_sync(deps, event.company_id, event.connection_id, job_id, applied.claimed)
    return "stale" if applied.outcome == "stale" else applied.status or "unknown"


def _log_status(event: Event, status: str | None) -> None:
    CONNECTION_STATUSES.labels(status or "unknown").inc()
    if event.event_type == "connection.failed":
        log.warning("connection.link_failed", status=status, errors=event.connection_errors)
    elif status in ("Deauthorized", "Unlinked"):
        # The business must relink before any new data can be pulled.
        log.warning("connection.needs_relink", status=status)
    else:
        log.info("connection.status", status=status)
