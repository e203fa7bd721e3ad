"""The rate-limit pause: while it is set, no worker calls Codat. Jobs it deferred are
remembered, so that a reset can put them back at the head of the queue at once."""

from __future__ import annotations

from redis.asyncio import Redis

from service.core.clock import now_ms
from service.stores.keys import QUEUE_NAME, RATE_LIMIT_DEFERRED, RATE_LIMIT_PAUSED_UNTIL


class RateLimits:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def paused_until(self) -> int | None:
        """Epoch ms the pause lasts until, or None when calls may go out."""
        until = await self._redis.get(RATE_LIMIT_PAUSED_UNTIL)
        return int(until) if until is not None and int(until) > now_ms() else None

    async def pause(self, until_ms: int) -> None:
        await self._redis.set(RATE_LIMIT_PAUSED_UNTIL, until_ms, px=max(1, until_ms - now_ms()))

    async def remember_deferred(self, job_id: str) -> None:
        await self._redis.sadd(RATE_LIMIT_DEFERRED, job_id)

    async def resume(self) -> int:
        """Lift the pause and make every job it deferred due now; how many were woken."""
        await self._redis.delete(RATE_LIMIT_PAUSED_UNTIL)
        job_ids = await self._redis.smembers(RATE_LIMIT_DEFERRED)
        if not job_ids:
            return 0
        now = now_ms()
        async with self._redis.pipeline(transaction=True) as pipe:
            for job_id in job_ids:
                pipe.zadd(QUEUE_NAME, {job_id: now}, xx=True)  # only jobs still waiting
            pipe.delete(RATE_LIMIT_DEFERRED)
            await pipe.execute()
        return len(job_ids)
