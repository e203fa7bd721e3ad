"""client.rateLimit.reached pauses every outgoing Codat call until its expiry, or until
client.rateLimit.reset. Paused jobs are deferred, not failed, and a reset wakes them at once."""

from __future__ import annotations

from typing import Any

import structlog
from redis.asyncio import Redis

from service.connections import iso, now_ms
from service.events import Event, parse_time_ms
from service.queue import QUEUE_NAME

log = structlog.get_logger("workers.rate_limit")

PAUSED_UNTIL = "codat:rate-limit:paused-until"
DEFERRED = "codat:rate-limit:deferred"  # job ids deferred by the pause, woken by a reset
# An expiry that cannot be read still means "stop": wait this long, then try again.
UNREADABLE_EXPIRY_PAUSE_MS = 15 * 60 * 1000


class Paused(Exception):
    def __init__(self, until_ms: int) -> None:
        super().__init__(f"Codat calls paused until {iso(until_ms)}")
        self.until_ms = until_ms


class RateLimitGate:
    """Runs before every Codat call (workers.codat.CodatClient's `before_call`)."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def __call__(self) -> None:
        until = await self._redis.get(PAUSED_UNTIL)
        if until is not None and int(until) > now_ms():
            raise Paused(int(until))


async def remember_deferred(redis: Redis, job_id: str) -> None:
    await redis.sadd(DEFERRED, job_id)


async def handle(ctx: dict[str, Any], event: Event) -> str:
    redis: Redis = ctx["redis"]
    body = event.body
    reached = event.event_type in ("client.rateLimit.reached", "ClientRateLimitReached")
    details = body.get("payload") if not event.legacy else body.get("Data")
    details = details if isinstance(details, dict) else {}
    if reached:
        raw_expiry = details.get("expiryDate" if not event.legacy else "ExpiresUtc")
        until = parse_time_ms(raw_expiry)
        if until is None:
            until = now_ms() + UNREADABLE_EXPIRY_PAUSE_MS
            log.warning("rate_limit.unreadable_expiry", expiry=raw_expiry, paused_until=iso(until))
        if until <= now_ms():
            log.warning("rate_limit.reached", paused_until=iso(until), paused=False, expiry_past=True)
            return "expired"
        await redis.set(PAUSED_UNTIL, until, px=until - now_ms())
        log.warning("rate_limit.reached", paused_until=iso(until), paused=True,
                    daily_quota=details.get("dailyQuota", details.get("DailyQuota")))
        return "paused"
    await redis.delete(PAUSED_UNTIL)
    woken = await _wake_deferred(redis)
    log.info("rate_limit.reset", woken_jobs=woken)
    return "resumed"


async def _wake_deferred(redis: Redis) -> int:
    job_ids = await redis.smembers(DEFERRED)
    if not job_ids:
        return 0
    now = now_ms()
    async with redis.pipeline(transaction=True) as pipe:
        for job_id in job_ids:
            pipe.zadd(QUEUE_NAME, {job_id: now}, xx=True)  # only jobs still waiting
        pipe.delete(DEFERRED)
        await pipe.execute()
    return len(job_ids)
