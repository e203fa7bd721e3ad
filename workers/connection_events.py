"""Connection events drive each connection's state; its first link requests its initial sync.

- An event newer (by `generatedDate`) than the one behind the current state moves it; an older
  one is logged and dropped.
- Where the order cannot be decided (legacy events carry no date, a date that cannot be read,
  two events of the same instant that disagree), Codat's own answer to GET connection is the
  truth, as of now.
- The initial sync follows the connection's state, not the event that arrived last: once a
  connection has been seen linked for the first time (`connection.connected`, or a legacy
  PendingAuth -> Linked, however late or stale that delivery is), whenever it is Linked and its
  initial sync was never requested, it is requested once (`data/all`, or `data/queue/{dataType}`
  per CODAT_SYNC_DATA_TYPES), under the claim kept in service.stores.connections. This is checked after
  every connection event, so `disconnected`, `reconnected`, `connected` arriving in that order
  still sync once, and a claim left by a failed job is resolved by the next event or rerun.
- `connection.reconnected` re-links a connection that was linked before: it moves the state to
  Linked but is not a first link (that connection's first sync happened at its first link;
  Codat's own sync schedule carries on from there), so a connection this service only ever saw
  reconnected is not synced.
"""

from __future__ import annotations

from typing import Any

import structlog

from service.core.clock import now_ms, parse_time_ms
from service.core.events import STATUSES, Event
from service.stores.connections import Applied, ConnectionStore
from workers.codat import CodatClient, RateLimited, Rejected
from workers.deps import Deps
from workers.metrics import CONNECTION_STATUSES
from workers.rate_limit import Paused

log = structlog.get_logger("workers.connection_events")

# When the pulls were requested must be read against this service's own clock: allow for skew.
_CLOCK_SKEW_MS = 60_000


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
    status, at = event.claimed_status, event.generated_ms
    applied: Applied | None = None
    if status is not None and at is not None:
        applied = await store.apply(status=status, at_ms=at, event_type=event.event_type, **told, **ids)
    if applied is None or applied.outcome == "tied":
        reason = applied.outcome if applied else "undecided"
        asked_at = now_ms()  # Codat's answer is the truth as of the moment it was asked
        truth = await codat.get_connection(event.company_id, event.connection_id)
        status = truth.get("status") if truth else "Deleted"
        if status not in STATUSES:
            log.error("connection.unreadable_status_from_codat", status=status)
            return "ignored"
        applied = await store.apply(
            status=status, at_ms=asked_at, event_type=event.event_type, authoritative=True, **told, **ids
        )
        log.info("connection.status_from_codat", status=status, reason=reason)
    if applied.outcome == "stale":
        log.info("connection.stale_event", claimed_status=status, status=applied.status)
    else:
        _log_status(event, applied.status)
    # Whatever event caused the change, and even when it changed nothing (a late, stale
    # `connection.connected` still says "first linked"), the initial sync follows the state.
    if applied.initial_sync_due:
        return await request_initial_sync(deps, event.company_id, event.connection_id, job_id)
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


async def request_initial_sync(deps: Deps, company_id: str, connection_id: str, owner: str) -> str:
    """`owner`: the job id, whose reruns find their own claim. CODAT_INITIAL_SYNC decides what
    a due initial sync is: `request` calls Codat; `auto` first looks at the connection's pull
    history since its first link and, if Codat already queued pulls (its Fetch on first link),
    records those as the initial sync and calls only for what is missing; `off` keeps state only."""
    store, codat = deps.connections, deps.codat
    policy = deps.settings.initial_sync
    if policy == "off":
        log.info("sync.initial_skipped", reason="policy_off")
        return "initial_sync_off"
    claim = await store.claim_initial_sync(connection_id, owner, deps.lease_ms)
    if claim in ("done", "busy", "not_linked", "not_first_linked"):
        log.info("sync.initial_skipped", reason=claim)
        return f"initial_sync_{claim}"
    data_types = deps.settings.sync_data_types
    pending = list(data_types)
    requested: set[str] = set()
    if claim in ("in_doubt", "orphaned") or policy == "auto":
        # in doubt: what did a call of ours get done since the claim; auto: what did Codat queue
        # by itself since the link (and on an in-doubt rerun, both)
        claimed_at = None if claim == "claimed" else await store.claimed_at(connection_id)
        linked_at = await store.first_link_at(connection_id) if policy == "auto" else None
        known = [t for t in (claimed_at, linked_at) if t is not None]
        since = min(known) if known else None
        requested = await requested_since(codat, company_id, connection_id, since)
        if claim != "claimed":
            log.info("sync.initial_in_doubt", already_requested=sorted(requested))
        pending = [t for t in data_types if t not in requested]
        if requested and not pending:
            if claim == "claimed":
                log.info("sync.initial_found_queued", data_types=sorted(requested))
            return await _settle(
                store, connection_id, owner, recovered=claim != "claimed", codat_queued=claim == "claimed"
            )
        if claim == "orphaned":
            return await _resolve_orphan(store, connection_id, owner, requested)
    done = 0
    try:
        if not data_types:
            await codat.refresh_all(company_id)
            done += 1
        for data_type in pending:
            await codat.refresh_data_type(company_id, connection_id, data_type)
            done += 1
    except (RateLimited, Rejected, Paused):
        # Codat said no before anything was requested, and nothing was found requested before
        # (a fresh claim, or an in-doubt one whose history showed nothing): the next try starts
        # clean. Anything already requested keeps the claim, and the next try looks first.
        if done == 0 and not requested:
            await store.release_initial_sync(connection_id, owner)
        raise
    return await _settle(
        store,
        connection_id,
        owner,
        recovered=claim == "in_doubt",
        mode="data_types" if data_types else "all",
        data_types=pending or None,
    )


async def _resolve_orphan(store: ConnectionStore, connection_id: str, owner: str, requested: set[str]) -> str:
    """A claim whose call may or may not have happened, on a connection that is not Linked now.
    Nothing was requested: release it, so that a relink claims afresh. Some data types were:
    keep it (leased), so that the relink looks first and requests only the rest."""
    if requested:
        log.info("sync.initial_claim_kept", already_requested=sorted(requested))
        return "initial_sync_partly_requested"
    await store.release_initial_sync(connection_id, owner)
    log.info("sync.initial_claim_released", reason="not_linked")
    return "initial_sync_released"


async def requested_since(codat: CodatClient, company_id: str, connection_id: str, since_ms: int | None) -> set[str]:
    """Data types Codat has pulls for, on this connection, requested since `since_ms`."""
    since = (since_ms or 0) - _CLOCK_SKEW_MS
    found = set()
    try:
        pulls = await codat.pull_history(company_id)
    except Rejected as exc:
        if exc.status != 404:
            raise
        pulls = []  # Codat no longer knows the company (deleted): nothing of it is pending
    for pull in pulls:
        requested = parse_time_ms(pull.get("requested"))
        if pull.get("connectionId") == connection_id and requested is not None and requested >= since:
            found.add(str(pull.get("dataType")))
    return found


async def _settle(store: ConnectionStore, connection_id: str, owner: str, **fields: Any) -> str:
    details = {
        "mode": fields.get("mode"),
        "dataTypes": fields.get("data_types"),
        "recovered": bool(fields.get("recovered")),
        "requestedBy": "codat" if fields.get("codat_queued") else "service",
    }
    if not await store.settle_initial_sync(connection_id, owner, **details):
        # Only if this job outlived its lease (job timeout > lease): another owner took over.
        log.error("sync.initial_claim_lost")
        return "initial_sync_claim_lost"
    log.info("sync.initial_requested", **fields)
    return "initial_sync_requested"
