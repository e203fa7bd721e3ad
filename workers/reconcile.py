"""Gap repair: the workers compare their state with Codat's API, page by page.

Codat gives up on a delivery after ~28 h of retries, disables an endpoint that fails for 5 days,
and has no API to replay what was missed. So a reconcile run pages `GET /companies` (each company
comes with its `dataConnections`) and, for every connection:

- takes Codat's status as the truth as of the moment the page was read, through the same
  compare-and-set the events use: an event generated after that moment keeps its state;
- requests the initial sync of a connection seen linked for the first time whose sync is due,
  under the same claim as the event path (exactly once, whoever gets there first);
- tells a first link it missed from one that happened before this service listened. A Linked
  connection it never saw linked counts as a missed first link only if Codat created it after
  this deployment's first worker started (the watermark in service.stores.keys.DEPLOYED_AT,
  minus a grace period) and Codat has no pull for it since it was created. Anything older is
  `preexisting`: deploying against an account with 10,000 linked connections starts no sync.
  One with pulls was synced by Codat itself (Fetch on first link): reported, not requested.
  Only a missed first link is written (as the first-link mark): an event still on its way
  decides the rest as it would have.
- finds connections Codat deleted while their `connection.deleted` was lost: the connections
  this service holds for a company (its index, keys.company_connections) that Codat's listing no
  longer has, and that `GET .../connections/{id}` answers 404 for, are moved to `Deleted` through
  the same compare-and-set, as Codat's answer (authoritative), with their lifecycle event; one
  written after the listing was read is left to the next run. A company this service holds that a
  full run never listed, and Codat answers 404 for, is reported (`reconcile.company_unknown`).

One run at a time across all workers (a leased lock), one page per job, the cursor in Redis:
a killed job is run again by arq and a lost run is resumed from its cursor by the next tick.
Every Codat call goes through the same client, so the rate-limit pause and 429 defer it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from arq import Retry
from redis.exceptions import RedisError

from service.core.clock import iso, now_ms, parse_time_ms
from service.core.events import STATUSES
from service.stores import keys
from workers.codat import RateLimited, Rejected, Unavailable
from workers.deps import Deps
from workers.initial_sync import request_initial_sync, requested_since
from workers.job import Job
from workers.jobs import backoff_seconds
from workers.metrics import RECONCILE_DRIFT, RECONCILE_RUNS
from workers.rate_limit import Paused

log = structlog.get_logger(__name__)
T = TypeVar("T")

PAGE_SIZE = 100
LOCK_LEASE_MS = 10 * 60 * 1000
# A connection Codat created this long before the first worker started still counts as new:
# the service may have been deployed just after a company linked.
DEPLOYMENT_GRACE_MS = 10 * 60 * 1000
# The companies a run listed, kept while it runs (a run resumed after a crash adds to them).
LISTED_TTL_SECONDS = 24 * 3600
MAX_UNKNOWN_CHECKS = 100  # GET company calls per run for companies it did not list


async def reconcile_tick(ctx: dict[str, Any]) -> str:
    """arq cron: start a run when one is due (or resume one a crash left), else nothing."""
    job = Job.of(ctx)
    deps = job.deps
    interval = deps.settings.reconcile_interval_seconds
    if not interval:
        return "off"
    current = await deps.reconciles.current()
    last = await deps.reconciles.last()
    if current is None and last is not None and last["finishedAt"] + interval * 1000 > now_ms():
        return "not_due"
    held = await deps.reconciles.start(uuid.uuid4().hex, LOCK_LEASE_MS)
    if held is None:
        return "running"
    run_id, page = held
    log.info("reconcile.started" if page == 1 else "reconcile.resumed", run_id=run_id, page=page)
    await _queue_page(job, run_id, page)
    return "started"


async def reconcile_page(ctx: dict[str, Any], run_id: str, page: int) -> str:
    """One page of companies; queues the next page or finishes the run."""
    job = Job.of(ctx)
    deps = job.deps
    structlog.contextvars.bind_contextvars(run_id=run_id, page=page, job_id=job.id)
    owner = keys.reconcile_page_job_id(run_id, page)  # this job's id, as queued: its rerun finds its claims
    try:
        async with asyncio.timeout(deps.call_budget_seconds):
            found, more = await reconcile_companies_page(deps, page, owner=owner, run_id=run_id)
    except Paused as exc:
        raise Retry(defer=max(0.0, (exc.until_ms - now_ms()) / 1000)) from None
    except RateLimited as exc:
        log.warning("reconcile.deferred", reason="rate_limited", retry_in_seconds=exc.retry_after)
        raise Retry(defer=exc.retry_after) from None
    except (Unavailable, TimeoutError, RedisError) as exc:
        delay = backoff_seconds(job.attempt, deps.settings.retry_base_seconds)
        log.warning("reconcile.deferred", reason=type(exc).__name__, retry_in_seconds=round(delay, 3))
        raise Retry(defer=delay) from None
    except Rejected as exc:
        # Codat refuses the listing itself (a revoked key, say; a single connection's refusal is
        # caught per connection): stop; the next tick tries again.
        log.error("reconcile.failed", error=str(exc), status=exc.status)
        RECONCILE_RUNS.labels("failed").inc()
        await deps.reconciles.release(run_id)
        return "failed"
    if not await deps.reconciles.advance(run_id, LOCK_LEASE_MS, page, found, page + 1 if more else 0):
        log.error("reconcile.lock_lost")
        return "lock_lost"
    if more:
        await _queue_page(job, run_id, page + 1)
        return "page_done"
    return await _finish(deps, run_id)


async def _queue_page(job: Job, run_id: str, page: int) -> None:
    await job.redis.enqueue_job(keys.RECONCILE_PAGE, run_id, page, _job_id=keys.reconcile_page_job_id(run_id, page))


async def _finish(deps: Deps, run_id: str) -> str:
    current = await deps.reconciles.current() or {}
    summary = {
        "id": run_id,
        "startedAt": current.get("startedAt"),
        "finishedAt": now_ms(),
        "pages": current.get("pagesDone"),
        "found": current.get("found", {}),
    }
    unknown = await _report_unknown_companies(deps, run_id)
    if unknown:
        summary["found"] = {**summary["found"], "unknown_company": unknown}
    await deps.reconciles.finish(run_id, summary)
    RECONCILE_RUNS.labels("completed").inc()
    log.info(
        "reconcile.completed", pages=summary["pages"], found=summary["found"], started_at=iso(summary["startedAt"])
    )
    return "completed"


async def reconcile_companies_page(
    deps: Deps, page: int, *, owner: str, dry_run: bool = False, run_id: str | None = None
) -> tuple[Counter[str], bool]:
    observed_at = now_ms()  # before the call: an event generated while it is in flight is newer
    companies, more = await deps.codat.list_companies(page, PAGE_SIZE)
    if run_id is not None:  # what this run listed, to find the companies Codat no longer knows
        listed = [c["id"] for c in companies if isinstance(c.get("id"), str)]
        if listed:
            await deps.queue.sadd(keys.reconcile_listed(run_id), *listed)
            await deps.queue.expire(keys.reconcile_listed(run_id), LISTED_TTL_SECONDS)
    found: Counter[str] = Counter()
    for company in companies:
        found += await reconcile_company(deps, company, observed_at, owner=owner, dry_run=dry_run)
    found["companies"] += len(companies)
    return found, more


async def reconcile_company(
    deps: Deps, company: dict[str, Any], observed_at: int, *, owner: str, dry_run: bool = False
) -> Counter[str]:
    found: Counter[str] = Counter()
    company_id = company.get("id")
    connections = company.get("dataConnections")
    if not isinstance(company_id, str) or not isinstance(connections, list):
        return found
    for connection in connections:
        if isinstance(connection, dict) and isinstance(connection.get("id"), str):
            name = company.get("name") if isinstance(company.get("name"), str) else None
            try:
                kind = await _reconcile_connection(deps, company_id, name, connection, observed_at, owner, dry_run)
            except Rejected as exc:  # one connection Codat refuses must not stop the run at this page
                log.error(
                    "reconcile.connection_failed",
                    company_id=company_id,
                    connection_id=connection["id"],
                    error=str(exc),
                    status=exc.status,
                )
                kind = "failed"
            found["connections"] += 1
            if kind:
                found[kind] += 1
                RECONCILE_DRIFT.labels(kind).inc()
                log.info(
                    "reconcile.drift",
                    kind=kind,
                    company_id=company_id,
                    connection_id=connection["id"],
                    status=connection.get("status"),
                    dry_run=dry_run,
                )
    found += await _reconcile_deleted(deps, company_id, connections, observed_at, dry_run)
    return found


async def _reconcile_deleted(
    deps: Deps, company_id: str, connections: list[Any], observed_at: int, dry_run: bool
) -> Counter[str]:
    """The connections held for the company that Codat's listing no longer has: Deleted, once
    Codat confirms it no longer knows them (404), through the same compare-and-set."""
    found: Counter[str] = Counter()
    listed = {c["id"] for c in connections if isinstance(c, dict) and isinstance(c.get("id"), str)}
    for connection_id in await deps.history.connections_of(company_id):
        if connection_id in listed:
            continue
        ours = await deps.connections.get(connection_id)
        if ours is None or ours["status"] == "Deleted":
            continue
        if (parse_time_ms(ours.get("updatedAt")) or 0) >= observed_at:
            continue  # written after the listing was read: the listing cannot speak for it
        try:
            asked_at = now_ms()
            if await deps.codat.get_connection(company_id, connection_id) is not None:
                continue  # still there (the listing lagged): the next run looks again
        except Rejected as exc:
            log.error(
                "reconcile.connection_failed",
                company_id=company_id,
                connection_id=connection_id,
                error=str(exc),
                status=exc.status,
            )
            continue
        if not dry_run:
            await deps.connections.apply(
                status="Deleted",
                at_ms=asked_at,
                event_type="reconcile",
                authoritative=True,
                company_id=company_id,
                connection_id=connection_id,
            )
        found["deleted"] += 1
        RECONCILE_DRIFT.labels("deleted").inc()
        log.info(
            "reconcile.drift",
            kind="deleted",
            company_id=company_id,
            connection_id=connection_id,
            status="Deleted",
            previous_status=ours["status"],
            dry_run=dry_run,
        )
    return found


async def _report_unknown_companies(deps: Deps, run_id: str) -> int:
    """The companies this service holds connections for that the run never listed and Codat
    answers 404 for: reported (a log line each, and the count in the run's summary), not changed."""
    redis, listed_key = deps.queue, keys.reconcile_listed(run_id)
    prefix, suffix = keys.company_connections("\0").split("\0")
    unknown = checked = 0
    try:
        async for name in redis.scan_iter(match=keys.company_connections("*"), count=1000):
            company_id = _text(name)[len(prefix) : -len(suffix)]
            if await redis.sismember(listed_key, company_id):
                continue
            if checked >= MAX_UNKNOWN_CHECKS:
                break  # the next run goes on: the check is cheap only while few are unlisted
            checked += 1
            if await deps.codat.get_company(company_id) is None:
                unknown += 1
                RECONCILE_DRIFT.labels("unknown_company").inc()
                log.warning(
                    "reconcile.company_unknown",
                    company_id=company_id,
                    connections=await redis.scard(name),
                )
    except (Rejected, Unavailable, RateLimited, Paused, RedisError) as exc:
        log.warning("reconcile.company_check_incomplete", error=str(exc))
    finally:
        await redis.delete(listed_key)
    return unknown


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _reconcile_connection(
    deps: Deps,
    company_id: str,
    company_name: str | None,
    connection: dict[str, Any],
    observed_at: int,
    owner: str,
    dry_run: bool,
) -> str | None:
    """What was out of line (a drift kind), or None."""
    store, connection_id, status = deps.connections, connection["id"], connection.get("status")
    if status not in STATUSES:
        return None
    ours = await store.get(connection_id)
    kind = "unknown_connection" if ours is None else "status" if ours["status"] != status else None
    # A Linked connection never seen linked, whose initial sync nobody accounted for: which is it?
    # Nothing is written for the answer but a missed first link: an event still on its way
    # (a `connection.connected` in the queue) must find the connection as it would have.
    link = None
    if status == "Linked" and not (ours and (ours["firstLinkSeen"] or ours["initialSync"])):
        missed = await _missed_first_link(deps, company_id, connection)
        if missed:
            link = "missed_first_link"
        elif ours is None:
            link = "preexisting" if missed is None else "synced_by_codat"
    if dry_run:
        return link or kind
    applied = await store.apply(
        status=status,
        at_ms=observed_at,
        event_type="reconcile",
        first_link=link == "missed_first_link",
        company_id=company_id,
        connection_id=connection_id,
        company_name=company_name,
    )
    if applied.outcome == "stale" and kind == "status":
        kind = "newer_event_kept"
    if applied.initial_sync_due:
        outcome = await request_initial_sync(deps, company_id, connection_id, owner)
        if outcome == "initial_sync_requested" and link is None:
            kind = "initial_sync_due"
    return link or kind


async def _missed_first_link(deps: Deps, company_id: str, connection: dict[str, Any]) -> bool | None:
    """None: linked before this deployment listened. True: linked since, and Codat has no pull
    for it (its first link was missed). False: linked since, and Codat already pulled for it."""
    created = parse_time_ms(connection.get("created"))
    deployed_at = await deps.reconciles.deployed_at()
    if created is None or deployed_at is None or created < deployed_at - DEPLOYMENT_GRACE_MS:
        return None
    pulled = await requested_since(deps.codat, company_id, connection["id"], created)
    return not pulled


async def run_once(deps: Deps, *, company_id: str | None = None, dry_run: bool = False) -> dict[str, Any]:
    """The command-line tool's reconcile, in the calling process: every page in a row (or one
    company), waiting out a 429 or the rate-limit pause instead of deferring a job. A full run
    that writes takes the same lock as the workers' and resumes their cursor."""
    owner = f"reconcile:cli:{uuid.uuid4().hex}"
    if company_id is not None:
        company = await _patiently(lambda: deps.codat.get_company(company_id))
        if company is None:
            return {"company": company_id, "found": {}, "error": "Codat does not know this company"}
        found = await reconcile_company(deps, company, now_ms(), owner=owner, dry_run=dry_run)
        return {"company": company_id, "dryRun": dry_run, "found": dict(found)}
    run_id, page = owner, 1
    if not dry_run:
        held = await deps.reconciles.start(run_id, LOCK_LEASE_MS)
        if held is None:
            return {"error": "a reconcile is running already (GET /ops/reconcile shows it)", "found": {}}
        run_id, page = held
    total: Counter[str] = Counter()
    while True:
        found, more = await _patiently(
            lambda page=page: reconcile_companies_page(
                deps, page, owner=f"{owner}:{page}", dry_run=dry_run, run_id=None if dry_run else run_id
            )
        )
        total += found
        if not dry_run:
            await deps.reconciles.advance(run_id, LOCK_LEASE_MS, page, found, page + 1 if more else 0)
        if not more:
            break
        page += 1
    if not dry_run:
        await _finish(deps, run_id)
    return {"dryRun": dry_run, "pages": page, "found": dict(total)}


async def _patiently(attempt: Callable[[], Awaitable[T]]) -> T:
    """`attempt()` again until it is not told to wait; a 429 or the pause is waited out."""
    while True:
        try:
            return await attempt()
        except Paused as exc:
            await asyncio.sleep(max(0.0, (exc.until_ms - now_ms()) / 1000))
        except RateLimited as exc:
            await asyncio.sleep(exc.retry_after)
