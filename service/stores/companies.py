"""What this service asked of Codat for a whole company: `data/all` is company-wide (it queues
the Fetch-on-first-link types on every linked connection of the company), so one call covers
every connection that was Linked when it was made, and one at a time per company is enough.
"""

from __future__ import annotations

from redis.asyncio import Redis

from service.stores.keys import company_connections, company_refresh_lock, company_refreshed_all
from service.stores.keys import connection as connection_key
from service.stores.replication import PRIMARY_ONLY, Replication, execute
from service.stores.scripts import Script

# How long a data/all is remembered as covering its connections: long past any delivery delay
# of the events of connections that linked together (Codat retries for ~28 hours).
COVERED_TTL_SECONDS = 3 * 24 * 3600


class CompanyRefreshes:
    def __init__(self, redis: Redis, replication: Replication = PRIMARY_ONLY) -> None:
        self._redis = redis
        self._replication = replication
        self._linked = Script(redis, "company_linked")
        self._unlock = Script(redis, "company_unlock")

    async def covered(self, company_id: str, connection_id: str) -> bool:
        return bool(await self._redis.sismember(company_refreshed_all(company_id), connection_id))

    async def lock(self, company_id: str, owner: str, lease_ms: int) -> bool:
        """The company's data/all lock, on REDIS_MIN_REPLICAS replicas before this returns (it
        guards a Codat call: a lock lost in a failover would let another job call at once):
        else NotReplicated, a RedisError, and the job retries."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(company_refresh_lock(company_id), owner, nx=True, px=lease_ms)
        (taken,) = await execute(self._redis, pipe, self._replication)
        return bool(taken)

    async def unlock(self, company_id: str, owner: str) -> None:
        await self._unlock(lock=company_refresh_lock(company_id), owner=owner)

    async def linked_connections(self, company_id: str) -> set[str]:
        found = await self._linked(
            company_connections=company_connections(company_id), connection_prefix=connection_key("")
        )
        return set(found)

    async def record_covered(self, company_id: str, connection_ids: set[str]) -> None:
        key = company_refreshed_all(company_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.sadd(key, *connection_ids)
            pipe.expire(key, COVERED_TTL_SECONDS)
            await pipe.execute()
