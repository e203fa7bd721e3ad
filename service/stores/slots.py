"""At most N Codat calls in flight per company, across every worker.

Codat allows 10 concurrent requests per company and answers 429 past that
(https://docs.codat.io/using-the-api/rate-limits). One sorted set per company holds a token per
call in flight, scored by when its lease ends: a worker that dies mid-call leaves a token that
the next taker sweeps once its lease is over, so a crash never keeps a slot.
"""

from __future__ import annotations

import contextlib

from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.core.clock import now_ms
from service.stores.keys import company_calls
from service.stores.scripts import Script


class CompanySlots:
    def __init__(self, redis: Redis, limit: int, lease_ms: int) -> None:
        self._redis = redis
        self._take = Script(redis, "company_slot_take")  # lua/company_slot_take.lua
        self.limit = limit
        self.lease_ms = lease_ms

    async def take(self, company_id: str, token: str) -> bool:
        taken = await self._take(
            calls=company_calls(company_id), now=now_ms(), token=token, limit=self.limit, lease_ms=self.lease_ms
        )
        return bool(taken)

    async def give_back(self, company_id: str, token: str) -> None:
        # Without Redis the lease ends it: the call's own outcome is what matters now.
        with contextlib.suppress(RedisError, OSError):
            await self._redis.zrem(company_calls(company_id), token)
