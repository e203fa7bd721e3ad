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

# KEYS[1]: the company's calls in flight. ARGV: now (ms), token, limit, lease (ms).
# Returns 1 when the token took a slot, 0 when the company's slots are all in use.
_TAKE = """
local now, lease = tonumber(ARGV[1]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], now + lease, ARGV[2])
redis.call('PEXPIRE', KEYS[1], lease)
return 1
"""


class CompanySlots:
    def __init__(self, redis: Redis, limit: int, lease_ms: int) -> None:
        self._redis = redis
        self._take = redis.register_script(_TAKE)
        self.limit = limit
        self.lease_ms = lease_ms

    async def take(self, company_id: str, token: str) -> bool:
        args = [now_ms(), token, self.limit, self.lease_ms]
        return bool(await self._take(keys=[company_calls(company_id)], args=args))

    async def give_back(self, company_id: str, token: str) -> None:
        # Without Redis the lease ends it: the call's own outcome is what matters now.
        with contextlib.suppress(RedisError, OSError):
            await self._redis.zrem(company_calls(company_id), token)
