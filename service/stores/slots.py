"""At most N Codat calls in flight per company, across every worker, and none while the
rate-limit pause holds.

Codat allows 10 concurrent requests per company and answers 429 past that
(https://docs.codat.io/using-the-api/rate-limits). One sorted set per company holds a token per
call in flight, scored by when its lease ends: a worker that dies mid-call leaves a token that
the next taker sweeps once its lease is over, so a crash never keeps a slot.

Before a call that names a company, one script call (lua/company_slot_take.lua) reads the
rate-limit pause (its rule: lua/rate_limit_paused.lua, service.stores.rate_limit) and takes the
slot: one round trip, not two. A first link's data/all takes both with the company's lock
instead (service.stores.companies), and gives the slot back with its settle.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.core.clock import now_ms
from service.stores.keys import RATE_LIMIT_PAUSED_UNTIL, company_calls
from service.stores.scripts import Script


class Taken(NamedTuple):
    """What lua/company_slot_take.lua answered."""

    outcome: str  # "taken" | "busy" (all slots in use) | "paused" (the rate-limit pause holds)
    paused_until: int | None = None  # paused: the pause's end (ms)


class CompanySlots:
    def __init__(self, redis: Redis, limit: int, lease_ms: int) -> None:
        self._redis = redis
        self._take = Script(redis, "company_slot_take")  # lua/company_slot_take.lua
        self.limit = limit
        self.lease_ms = lease_ms

    async def take(self, company_id: str, token: str) -> Taken:
        """A slot for `token`, unless the rate-limit pause holds or every slot is in use."""
        outcome, *until = await self._take(
            calls=company_calls(company_id),
            pause=RATE_LIMIT_PAUSED_UNTIL,
            now=now_ms(),
            token=token,
            limit=self.limit,
            lease_ms=self.lease_ms,
        )
        return Taken(outcome, int(until[0]) if until else None)

    async def give_back(self, company_id: str, token: str) -> None:
        # Without Redis the lease ends it: the call's own outcome is what matters now.
        with contextlib.suppress(RedisError, OSError):
            await self._redis.zrem(company_calls(company_id), token)
