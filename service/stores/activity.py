"""What the service is doing now, as the ops console's overview and delivery pages read it
(service.web.console); nothing here is on the ingress path.

- **Per minute**, what the jobs did: `counts` once per job try, written with its end
  (workers.worker, service.stores.jobqueue). A job's first try counts one delivery, at the
  minute the web process received it (each accepted delivery is one job); every try counts its
  outcome at the minute it ended.
  One small hash per minute (`deliveries`, `outcome:<outcome>`), each expiring two hours after
  its minute began: at most ~120 hashes of a few fields, a few tens of KB whatever the traffic.
- **The queue and the workers**, read as `GET /metrics` reads them (service.web.metrics).
- **A delivery still in flight**: its dedup record, and its job queued, deferred or running.
"""

from __future__ import annotations

import contextlib
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.core.clock import now_ms
from service.stores import keys
from service.stores.scripts import Script, text

MINUTE_MS = 60_000
DELIVERIES = "deliveries"
OUTCOME = "outcome:"
_FIRST_DELIVERY_JOB = keys.event_job_id("")  # a replay's job is not a delivery
_COUNT = Script(None, "activity_count")  # lua/activity_count.lua


# A count as lua/job_traces.lua takes it: the minute's key, field, how many, the minute's expiry.
Count = tuple[str, str, int, int]


def counts(job_id: str | None, job_try: int, received_at_ms: int | None, outcome: str, now: int) -> list[Count]:
    """What one job try that ended with `outcome` adds to the minutes' counts."""
    horizon = now - keys.ACTIVITY_TTL_SECONDS * 1000
    minute = now // MINUTE_MS
    added: list[Count] = []
    first = job_try == 1 and (job_id or "").startswith(_FIRST_DELIVERY_JOB)
    if first and received_at_ms is not None and received_at_ms > horizon:
        received = min(received_at_ms, now) // MINUTE_MS
        added.append((keys.activity_minute(received), DELIVERIES, 1, _expiry(received)))
    added.append((keys.activity_minute(minute), OUTCOME + outcome, 1, _expiry(minute)))
    return added


async def count_job(
    redis: Redis,
    job_id: str | None,
    job_try: int,
    received_at_ms: int | None,
    outcome: str,
    *,
    now: int | None = None,
) -> None:
    """Count one job try that ended with `outcome`, on its own: the workers write their counts
    with the jobs' ends instead (service.stores.jobqueue.finish_batch). Never raises for Redis:
    a count is not worth a job's retry."""
    added = counts(job_id, job_try, received_at_ms, outcome, now_ms() if now is None else now)
    with contextlib.suppress(RedisError, OSError):
        await _COUNT.run(redis, minutes=[c[0] for c in added], counts=[v for c in added for v in (c[1], c[2], c[3])])


def _expiry(minute: int) -> int:
    return minute * MINUTE_MS // 1000 + keys.ACTIVITY_TTL_SECONDS


async def last_hour(redis: Redis, *, minutes: int = 60, now: int | None = None) -> list[dict[str, Any]]:
    """Oldest first, one entry a minute up to the current one: {minute (epoch ms), deliveries,
    outcomes: {outcome: jobs}}."""
    now = now_ms() if now is None else now
    current = now // MINUTE_MS
    wanted = list(range(current - minutes + 1, current + 1))
    async with redis.pipeline(transaction=False) as pipe:
        for minute in wanted:
            pipe.hgetall(keys.activity_minute(minute))
        answers = await pipe.execute()
    series = []
    for minute, fields in zip(wanted, answers, strict=True):
        counts = {text(k): int(v) for k, v in fields.items()}
        series.append(
            {
                "minute": minute * MINUTE_MS,
                "deliveries": counts.pop(DELIVERIES, 0),
                "outcomes": {k.removeprefix(OUTCOME): v for k, v in counts.items() if k.startswith(OUTCOME)},
            }
        )
    return series


async def service_state(redis: Redis, *, now: int | None = None) -> dict[str, Any]:
    """Queue depth (due and deferred), the oldest due job's age, dead letters, the workers' health
    check (arq's: one key for all workers, refreshed every 10 s while any polls) and the rate-limit
    pause: what the console's overview shows and GET /metrics reports (service.web.metrics)."""
    now = now_ms() if now is None else now
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(keys.QUEUE_NAME)
        pipe.zcount(keys.QUEUE_NAME, "-inf", now)
        pipe.zrangebyscore(keys.QUEUE_NAME, "-inf", now, start=0, num=1, withscores=True)
        pipe.hlen(keys.DEAD_LETTERS)
        pipe.get(keys.HEALTH_CHECK)
        pipe.pttl(keys.HEALTH_CHECK)
        pipe.get(keys.RATE_LIMIT_PAUSED_UNTIL)
        depth, due, oldest, letters, health, health_ttl, paused = await pipe.execute()
    paused_until = int(paused) if paused is not None and int(paused) > now else None
    return {
        "queueDepth": int(depth),
        "due": int(due),
        "deferred": int(depth) - int(due),
        "oldestDueAgeSeconds": max(0.0, (now - oldest[0][1]) / 1000) if oldest else None,
        "deadLetters": int(letters),
        "workerPolling": health is not None,
        "workerHealth": text(health) if health is not None else None,
        "workerHealthTtlMs": int(health_ttl) if health is not None and int(health_ttl) > 0 else None,
        "rateLimitPausedUntil": paused_until,
        "rateLimitPaused": paused is not None,  # the pause's key is there (it expires as the pause ends)
    }


async def delivery_in_flight(redis: Redis, message_id: str, *, now: int | None = None) -> dict[str, Any]:
    """What Redis holds of a delivery whose job may not have ended yet: {seen (its dedup record:
    a copy arriving now is answered 200), seenForSeconds, job: None or {id, dueAt (epoch ms, None
    once taken), running}}."""
    now = now_ms() if now is None else now
    job_id = keys.event_job_id(message_id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.ttl(keys.seen(message_id))
        pipe.exists(keys.job_key(job_id))
        pipe.zscore(keys.QUEUE_NAME, job_id)
        pipe.exists(keys.IN_PROGRESS_KEY_PREFIX + job_id)
        seen_ttl, job_exists, due_at, running = await pipe.execute()
    job = None
    if job_exists or due_at is not None or running:
        job = {"id": job_id, "dueAt": int(due_at) if due_at is not None else None, "running": bool(running)}
    return {
        "seen": int(seen_ttl) != -2,
        "seenForSeconds": int(seen_ttl) if int(seen_ttl) >= 0 else None,
        "job": job,
    }
