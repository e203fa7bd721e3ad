"""The one arq job: a normalised Codat event, routed by its type, and what happens when the
Codat API does not cooperate:

- paused by client.rateLimit.reached: deferred until the expiry (a reset wakes it sooner)
- 429: deferred by Retry-After
- 5xx, timeout, connection error: retried with exponential backoff and jitter
- Redis unreachable mid-job: retried with backoff too (never a dead letter)
- any other 4xx (or a 3xx, never followed), or out of tries: a dead letter, replayable
- a bug (any other exception): a dead letter too, never a lost event

Deferring is arq's Retry: the job goes back on the queue with a later score, so no worker slot
is ever held sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from arq import Retry
from redis.exceptions import RedisError

from service.core.catalogue import CONNECTION_EVENTS, RATE_LIMIT_EVENTS, SYNC_EVENTS
from service.core.clock import now_ms
from service.core.events import Event
from service.stores import keys
from service.stores.activity import count_job, counts
from service.stores.history import trace_value
from service.stores.keys import MAX_TRIES
from workers import connection_events, rate_limit, sync_events
from workers.codat import CodatError, RateLimited, Rejected, Unavailable
from workers.job import Job
from workers.metrics import JOB_SECONDS, JOBS

log = structlog.get_logger(__name__)

MAX_BACKOFF_SECONDS = 300.0


async def _connection(job: Job, event: Event) -> str:
    return await connection_events.handle(job.deps, event, job.id)


async def _sync(job: Job, event: Event) -> str:
    return await sync_events.handle(job.deps.syncs, event, job.ending)


async def _rate_limit(job: Job, event: Event) -> str:
    return await rate_limit.handle(job.deps.rate_limits, event)


async def _recorded(job: Job, event: Event) -> str:
    log.info("event.recorded")
    return "recorded"


Handler = Callable[[Job, Event], Awaitable[str]]
HANDLERS: dict[str, Handler] = {
    "connection": _connection,
    "sync": _sync,
    "rate_limit": _rate_limit,
    "recorded": _recorded,
    "unknown": _recorded,
}


def route_of(event: Event) -> str:
    if event.event_type in CONNECTION_EVENTS:
        return "connection"
    if event.event_type in SYNC_EVENTS:
        return "sync"
    if event.event_type in RATE_LIMIT_EVENTS:
        return "rate_limit"
    return "recorded" if event.known else "unknown"


def backoff_seconds(job_try: int, base: float) -> float:
    """Exponential, capped, with "equal jitter": half fixed, half random, so that a burst of
    failures does not come back as a burst."""
    ceiling = min(MAX_BACKOFF_SECONDS, base * 2 ** max(0, job_try - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


async def process_event(ctx: dict[str, Any], record: dict[str, Any]) -> str:
    job = Job.of(ctx)
    event = Event.from_dict(record)
    structlog.contextvars.bind_contextvars(
        webhook_id=event.message_id,
        event_type=event.event_type,
        job_id=job.id,
        job_try=job.attempt,
        **event.ids(),
    )
    route = route_of(event)
    started = time.perf_counter()
    outcome = "deferred"  # what it stays if the job is sent back to the queue (arq's Retry)
    try:
        outcome = await _handle(job, event, record, route)
    finally:
        JOBS.labels(route, outcome).inc()
        JOB_SECONDS.labels(route).observe(time.perf_counter() - started)
        await _trace(job, event, route, outcome)
    return outcome


async def _trace(job: Job, event: Event, route: str, outcome: str) -> None:
    """What this job did with the delivery, and the minute's counts, for the ops console: handed
    to the worker, which writes them with the job's end (workers.job.Ending). Never at the cost
    of the job: without Redis the job's own retry is what matters."""
    now = now_ms()
    trace = {
        "jobId": job.id,
        "eventType": event.event_type,
        "route": route,
        "outcome": outcome,
        "companyId": event.company_id,
        "connectionId": event.connection_id,
        "receivedAtMs": str(event.received_at_ms),
        "processedAtMs": str(now),
    }
    if job.ending is not None:
        job.ending.trace = (keys.delivery_trace(event.message_id), trace_value(trace, job.attempt))
        job.ending.counts = tuple(counts(job.id, job.attempt, event.received_at_ms, outcome, now))
        return
    with contextlib.suppress(RedisError, OSError):
        await job.deps.history.record_delivery(event.message_id, trace, tries=job.attempt)
        await count_job(job.redis, job.id, job.attempt, event.received_at_ms, outcome, now=now)


async def _handle(job: Job, event: Event, record: dict[str, Any], route: str) -> str:
    try:
        return await _policy(job, event, record, route)
    except RedisError as exc:
        # Redis went away while the policy itself wrote (a deferral remembered, a dead letter):
        # retried all the same, never lost to arq's plain failure.
        delay = backoff_seconds(job.attempt, job.deps.settings.retry_base_seconds)
        log.warning("job.deferred", reason="redis_unavailable", retry_in_seconds=round(delay, 3), error=str(exc))
        raise Retry(defer=delay) from None


async def _policy(job: Job, event: Event, record: dict[str, Any], route: str) -> str:
    deps = job.deps
    try:
        async with asyncio.timeout(deps.call_budget_seconds):
            outcome = await HANDLERS[route](job, event)
    except rate_limit.Paused as exc:
        await deps.rate_limits.remember_deferred(job.id)
        return await _defer(job, record, (exc.until_ms - now_ms()) / 1000, "rate_limit_paused", exc)
    except RateLimited as exc:
        return await _defer(job, record, exc.retry_after, "rate_limited", exc)
    except (Unavailable, TimeoutError) as exc:
        delay = backoff_seconds(job.attempt, deps.settings.retry_base_seconds)
        return await _defer(job, record, delay, "codat_unavailable", exc)
    except Rejected as exc:
        return await _dead_letter(job, record, "codat_rejected", exc)
    except RedisError as exc:
        # Redis went away mid-job (a restart, a failover): not the event's fault, try it again.
        # Every write the job makes is a compare-and-set or a claim, so a rerun repeats nothing.
        delay = backoff_seconds(job.attempt, deps.settings.retry_base_seconds)
        return await _defer(job, record, delay, "redis_unavailable", exc)
    except Exception as exc:
        log.exception("job.failed_unexpectedly")
        return await _dead_letter(job, record, "unexpected_error", exc)
    log.info("event.processed", route=route, outcome=outcome)
    return outcome


async def _defer(job: Job, record: dict[str, Any], seconds: float, reason: str, exc: BaseException) -> str:
    if job.attempt >= MAX_TRIES:
        return await _dead_letter(job, record, f"{reason}_out_of_tries", exc)
    seconds = max(0.0, seconds)
    log.warning("job.deferred", reason=reason, retry_in_seconds=round(seconds, 3), error=str(exc))
    raise Retry(defer=seconds)


async def _dead_letter(job: Job, record: dict[str, Any], reason: str, exc: BaseException) -> str:
    deps = job.deps
    letters = deps.dead_letters
    if record.get("connection_id") and job.id:
        # A claim this job held is up for the taking now (its replay has another job id), not
        # only once its lease runs out.
        await deps.connections.expire_claim(record["connection_id"], job.id)
    status = exc.status if isinstance(exc, CodatError) else None
    letter_id = await letters.add(
        record,
        reason=reason,
        error=str(exc) or type(exc).__name__,
        job_id=job.id,
        attempts=job.attempt,
        status=status,
    )
    log.error("job.dead_lettered", reason=reason, dead_letter_id=letter_id, status=status, error=str(exc))
    return "dead_lettered"
