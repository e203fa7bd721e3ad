"""What this service asked of Codat for a whole company: `data/all` is company-wide (it queues
the Fetch-on-first-link types on every linked connection of the company), so one call covers
every connection that was Linked when it was made, and one at a time per company is enough.

Two round trips around a call: `lock` (lua/company_lock.lua: covered already? else the lock, and
the connections the call will cover; with `slots`, the call's rate-limit pause and company slot
too) and `unlock` (lua/company_unlock.lua: record them, give the lock and the slot up). A first
link gives them up in its settle instead (service.stores.connections).
"""

from __future__ import annotations

from typing import NamedTuple

import orjson
from redis.asyncio import Redis

from service.core.clock import now_ms
from service.stores.keys import (
    RATE_LIMIT_PAUSED_UNTIL,
    company_calls,
    company_connections,
    company_refresh_lock,
    company_refreshed_all,
)
from service.stores.keys import connection as connection_key
from service.stores.replication import PRIMARY_ONLY, Replication, execute
from service.stores.scripts import Script, decoded
from service.stores.slots import CompanySlots

# How long a data/all is remembered as covering its connections: long past any delivery delay
# of the events of connections that linked together (Codat retries for ~28 hours).
COVERED_TTL_SECONDS = 3 * 24 * 3600


class Refresh(NamedTuple):
    """The company's data/all lock, as lua/company_lock.lua answered it."""

    # "locked" | "covered" (an earlier call covered the connection) | "busy" (another holds it) |
    # "paused" (the rate-limit pause holds: `paused_until`) | "no_slot" (the company's calls in
    # flight at Codat's limit)
    outcome: str
    owner: str
    linked: frozenset[str] = frozenset()  # locked: the company's other connections Linked now
    slot: bool = False  # locked: a company slot is held under `owner` for the call
    paused_until: int | None = None  # paused: the pause's end (ms)

    @classmethod
    def of(cls, reply: list[str], owner: str, slot: bool) -> Refresh:
        outcome, *rest = decoded(reply)
        if outcome == "paused":
            return cls(outcome, owner, paused_until=int(rest[0]))
        return cls(outcome, owner, frozenset(rest), slot and outcome == "locked")


class CompanyRefreshes:
    def __init__(
        self, redis: Redis, replication: Replication = PRIMARY_ONLY, slots: CompanySlots | None = None
    ) -> None:
        """`slots`: the lock takes the call's slot (and reads the rate-limit pause) with it, so
        that the call goes out without a round trip of its own (workers.codat: `slot_held`)."""
        self._redis = redis
        self._replication = replication
        self._slots = slots
        self._lock = Script(redis, "company_lock")
        self._unlock = Script(redis, "company_unlock")

    async def lock(self, company_id: str, connection_id: str, owner: str, lease_ms: int) -> Refresh:
        """The company's data/all lock for a call about `connection_id`, unless an earlier call
        covered it. A lock taken is on REDIS_MIN_REPLICAS replicas before this returns (it guards a
        Codat call: a lock lost in a failover would let another job call at once): else
        NotReplicated, a RedisError, and the job retries."""
        slots = self._slots
        pipe = self._redis.pipeline(transaction=False)
        self._lock.stage(
            pipe,
            covered=company_refreshed_all(company_id),
            lock=company_refresh_lock(company_id),
            company_connections=company_connections(company_id),
            calls=company_calls(company_id),
            pause=RATE_LIMIT_PAUSED_UNTIL,
            connection_id=connection_id,
            owner=owner,
            lease_ms=lease_ms,
            connection_prefix=connection_key(""),
            now=now_ms(),
            slot_limit=slots.limit if slots else 0,
            slot_lease_ms=slots.lease_ms if slots else 0,
        )
        (reply,) = await execute(self._redis, pipe, self._replication)
        return Refresh.of(reply, owner, slots is not None)

    async def unlock(
        self, company_id: str, owner: str, covered: set[str] | frozenset[str] = frozenset(), *, slot: bool = False
    ) -> None:
        """Record the connections the call covered (none: it was not made), and give the lock up
        (and the slot taken with it, with `slot`)."""
        await self._unlock(
            covered=company_refreshed_all(company_id),
            lock=company_refresh_lock(company_id),
            calls=company_calls(company_id),
            owner=owner,
            connections=orjson.dumps(sorted(covered)),
            covered_ttl=COVERED_TTL_SECONDS,
            slot=int(slot),
        )
