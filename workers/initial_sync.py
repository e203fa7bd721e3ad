"""A connection's initial sync, as Codat behaves: requested once per first link, under the claim
kept in service.stores.connections, for what Codat will not pull by itself.

What Codat documents, and what this module does about it:
- Fetch on first link is on by default: when a connection links, Codat itself queues a pull of
  every data type whose `fetchOnFirstLink` is true in the company's sync settings
  (https://docs.codat.io/core-concepts/data-type-settings). `auto` (CODAT_INITIAL_SYNC) reads
  those settings (the company's, falling back to the client's, cached) and requests only the
  configured types Codat will not fetch; a job minutes later (`check_initial_pulls`) reads the
  pull history and requests what Codat was expected to start and did not.
- Queueing a type already being pulled answers DatasetAlreadyInProgressException
  (https://docs.codat.io/using-the-api/queueing-data-syncs): the type is being pulled now, so it
  counts as requested (`sync.initial_found_in_progress`), never as a failure.
- `data/all` is company-wide: it queues the Fetch-on-first-link types on every linked connection
  of the company. One at a time per company (a leased lock), and each records the connections
  it covered, so connections of one company that link together cost one call.

What a first link costs Redis (every web and worker share one primary, deploy/SCALING.md): a
connection event's apply takes the claim in its own call (`claim_for`); a data/all takes the
company's lock, reads what it covers and takes the call's rate-limit gate and company slot, in
one more, just before the call; the settle records what it covered and gives the lock and the
slot back in its own. Three round trips in all.
- `request` calls on every first link as configured; `off` keeps state only.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import structlog
from arq import Retry
from redis.exceptions import RedisError

from service.core.clock import parse_time_ms
from service.stores.companies import Refresh
from service.stores.connections import Claim, ConnectionStore
from service.stores.keys import CHECK_INITIAL_PULLS, MAX_TRIES, initial_pulls_check_job_id
from workers.codat import CodatClient, CompanyBusy, Queued, RateLimited, Rejected, Unavailable, company_busy
from workers.deps import Deps
from workers.job import Job
from workers.rate_limit import Paused

log = structlog.get_logger(__name__)

# One data/all at a time per company: held for one call (10 s timeout) and its bookkeeping; a
# worker that dies holding it keeps the company's other first links waiting no longer than this.
REFRESH_LOCK_MS = 15_000
# When the pulls were requested must be read against this service's own clock: allow for skew.
CLOCK_SKEW_MS = 60_000


def claim_for(deps: Deps, owner: str) -> Claim | None:
    """What a connection event's apply takes in its own call should it make the initial sync
    due: the claim (None: policy off, no claim ever)."""
    return None if deps.settings.initial_sync == "off" else Claim(owner, deps.lease_ms)


async def request_initial_sync(
    deps: Deps, company_id: str, connection_id: str, owner: str, claim: str | None = None
) -> str:
    """`owner`: the job id, whose reruns find their own claim. `claim`: what the claim came to
    in the apply that made the sync due (`claim_for`); taken here otherwise."""
    store, codat = deps.connections, deps.codat
    policy = deps.settings.initial_sync
    if policy == "off":
        log.info("sync.initial_skipped", reason="policy_off")
        return "initial_sync_off"
    if claim is None:
        claim = await store.claim_initial_sync(connection_id, owner, deps.lease_ms)
    if claim in ("done", "busy", "not_linked", "not_first_linked"):
        log.info("sync.initial_skipped", reason=claim)
        return f"initial_sync_{claim}"
    configured = deps.settings.sync_data_types  # empty: data/all
    # What Codat queues by itself on this first link, and so is left to it (auto only).
    by_codat: frozenset[str] = frozenset()
    if policy == "auto":
        fetched = await deps.fetch_on_first_link.of(company_id)
        by_codat = fetched & set(configured) if configured else fetched
    wanted = [t for t in configured if t not in by_codat]
    call_all = not configured and policy == "request"
    requested: set[str] = set()
    if claim in ("in_doubt", "orphaned"):
        # A call of ours may have gone through since the claim: look before calling again.
        requested = await requested_since(codat, company_id, connection_id, await store.claimed_at(connection_id))
        log.info("sync.initial_in_doubt", already_requested=sorted(requested))
        if requested and all(t in requested for t in wanted):
            return await _settle(store, company_id, connection_id, owner, recovered=True)
        if claim == "orphaned":
            return await _resolve_orphan(store, connection_id, owner, requested)
    pending = [t for t in wanted if t not in requested]
    answers: dict[str, Queued] = {}
    locked: Refresh | None = None  # the company's data/all lock, held until the settle gives it back
    try:
        if call_all:
            refresh = await _lock(deps, company_id, connection_id)
            # Covered: one of ours already covered this connection (it was Linked here when made).
            locked = refresh if refresh.outcome == "locked" else None
            answers["all"] = await codat.refresh_all(company_id, slot_held=refresh.slot) if locked else "covered"
        for data_type in pending:
            answers[data_type] = await codat.refresh_data_type(company_id, connection_id, data_type)
    except BaseException as exc:
        if locked:  # no call made, nothing covered
            await deps.companies.unlock(company_id, locked.owner, slot=locked.slot)
        if isinstance(exc, (RateLimited, Rejected, Paused)) and not answers and not requested:
            # Codat said no before anything was requested, and nothing was found requested before
            # (a fresh claim, or an in-doubt one whose history showed nothing): the next try starts
            # clean. Anything already requested keeps the claim, and the next try looks first.
            await store.release_initial_sync(connection_id, owner)
        raise
    running = sorted(t for t, answer in answers.items() if answer == "in_progress")
    if running:
        log.info("sync.initial_found_in_progress", data_types=running)
    mode = "data_types" if configured else "all"
    if by_codat:
        await _schedule_check(deps, company_id, connection_id, sorted(by_codat), mode)
    return await _settle(
        store,
        company_id,
        connection_id,
        owner,
        refresh=locked,
        recovered=claim == "in_doubt",
        mode=mode,
        data_types=pending or None,
        codat_queues=sorted(by_codat) or None,
        by_codat=bool(by_codat) and not answers,
    )


async def refresh_company(deps: Deps, company_id: str, connection_id: str) -> Queued | str:
    """`data/all` for the company, unless one of ours already covered this connection ("covered").
    One at a time per company: another job's call in flight defers this one a moment, and its
    rerun finds itself covered if it was Linked (here) when that call was made."""
    refresh = await _lock(deps, company_id, connection_id)
    if refresh.outcome == "covered":
        return "covered"
    covered: frozenset[str] = frozenset()
    try:
        # Read under the lock, before the call: a connection Linked here now is linked at Codat
        # already (its event came after the fact), so this call covers it.
        answer = await deps.codat.refresh_all(company_id, slot_held=refresh.slot)
        covered = refresh.linked | {connection_id}
        return answer
    finally:
        await deps.companies.unlock(company_id, refresh.owner, covered, slot=refresh.slot)


async def _lock(deps: Deps, company_id: str, connection_id: str) -> Refresh:
    """The company's data/all lock with the call's slot, or "covered". What keeps the call from
    going out raises as the call itself would have: another data/all in flight or the company's
    slots in use defer the job a moment (CompanyBusy), the rate-limit pause past it (Paused)."""
    refresh = await deps.companies.lock(company_id, connection_id, uuid.uuid4().hex, REFRESH_LOCK_MS)
    if refresh.outcome == "paused":
        raise Paused(refresh.paused_until or 0)
    if refresh.outcome == "busy":
        raise CompanyBusy(company_id)
    if refresh.outcome == "no_slot":
        raise company_busy("refresh_all", company_id)
    return refresh


async def _schedule_check(deps: Deps, company_id: str, connection_id: str, data_types: list[str], mode: str) -> None:
    since = await deps.connections.first_link_at(connection_id)
    await deps.queue.enqueue_job(
        CHECK_INITIAL_PULLS,
        company_id,
        connection_id,
        data_types,
        since,
        mode,
        _job_id=initial_pulls_check_job_id(connection_id),
        _defer_by=deps.settings.initial_pulls_check_seconds,
    )


async def check_initial_pulls(
    ctx: dict[str, Any], company_id: str, connection_id: str, data_types: list[str], since_ms: int | None, mode: str
) -> str:
    """Did the pulls Codat was expected to queue on this first link start? Those it did not
    are requested now (a rerun reads the history again first, so nothing is asked twice)."""
    job = Job.of(ctx)
    deps = job.deps
    structlog.contextvars.bind_contextvars(company_id=company_id, connection_id=connection_id)
    try:
        # inside arq's job timeout, so that a hung call is this job's retry, not arq's failure
        async with asyncio.timeout(deps.call_budget_seconds):
            answers = await _check(deps, company_id, connection_id, data_types, since_ms, mode, job.attempt)
    except (Paused, RateLimited, Unavailable, RedisError, TimeoutError) as exc:
        delay = exc.until_ms / 1000 - time.time() if isinstance(exc, Paused) else getattr(exc, "retry_after", 5.0)
        log.warning("sync.initial_check_deferred", reason=type(exc).__name__, retry_in_seconds=round(delay, 3))
        raise Retry(defer=max(0.5, delay)) from None
    except Rejected as exc:
        log.error("sync.initial_check_failed", status=exc.status, error=str(exc))
        return "rejected"
    if answers is None:
        return "done"
    log.info("sync.initial_requested_after_check", data_types=sorted(answers), answers=answers)
    return "requested"


async def _check(
    deps: Deps,
    company_id: str,
    connection_id: str,
    data_types: list[str],
    since_ms: int | None,
    mode: str,
    attempt: int,
) -> dict[str, str] | None:
    """What had to be requested, and Codat's answer to each; None if nothing had to be.

    Pulls missing on a connection that is not Linked now (disconnected in the meantime) cannot
    be asked for yet, and are still owed: Codat queues them by itself only "when a company is
    first linked" (https://docs.codat.io/core-concepts/data-type-settings), and a reconnect is
    no first link, so nothing else would ask for them. The check waits (comes back after the
    same delay) until it is Linked again, for up to MAX_TRIES checks; gone (deleted), nothing is
    owed."""
    current = await deps.connections.get(connection_id)
    if current is None or current.get("status") == "Deleted":  # gone: no pull is owed, or can be
        log.info("sync.initial_check_skipped", reason="not_linked", status=current and current.get("status"))
        return None
    started = await requested_since(deps.codat, company_id, connection_id, since_ms)
    missing = [t for t in data_types if t not in started]
    if not missing:
        log.info("sync.initial_codat_pulls_started", data_types=data_types)
        return None
    status = current.get("status")
    if status != "Linked":
        if attempt >= MAX_TRIES:
            log.warning("sync.initial_check_skipped", reason="not_linked", status=status, data_types=missing)
            return None
        delay = deps.settings.initial_pulls_check_seconds
        log.info("sync.initial_check_waiting", status=status, data_types=missing, retry_in_seconds=delay)
        raise Retry(defer=delay)
    log.warning("sync.initial_codat_pulls_missing", data_types=missing)
    if mode == "all":
        answer = await refresh_company(deps, company_id, connection_id)
        answers = dict.fromkeys(missing, "queued" if answer == "queued" else "in_progress")
    else:
        answers = {t: await deps.codat.refresh_data_type(company_id, connection_id, t) for t in missing}
    return answers


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
    since = (since_ms or 0) - CLOCK_SKEW_MS
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


async def _settle(
    store: ConnectionStore,
    company_id: str,
    connection_id: str,
    owner: str,
    refresh: Refresh | None = None,
    **fields: Any,
) -> str:
    """`refresh`: the data/all lock the call was made under, given back in the same call, with
    the other connections it covered recorded (this one is settled: it needs no mark)."""
    details = {
        "mode": fields.get("mode"),
        "dataTypes": fields.get("data_types"),
        "recovered": bool(fields.get("recovered")),
        "requestedBy": "codat" if fields.pop("by_codat", False) else "service",
    }
    if not await store.settle_initial_sync(connection_id, owner, company_id=company_id, refresh=refresh, **details):
        # Only if this job outlived its lease (job timeout > lease): another owner took over.
        log.error("sync.initial_claim_lost")
        return "initial_sync_claim_lost"
    log.info("sync.initial_requested", **fields)
    return "initial_sync_requested"
