"""Reconciled connection state: one Redis hash per connection, changed only by scripts.

Deliveries arrive late, twice and out of order, and several workers run at once, so every
change is a compare-and-set inside Redis: a status is written only by an event newer than the
one that wrote the current status. The same hash holds the claim that makes a connection's
initial sync happen once: a worker takes it (owner + lease) before calling Codat and settles
it after; a claim found again by its owner, or found expired, means a call whose outcome is in
doubt (the worker died or timed out mid-call), and the new owner must look before it calls.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from redis.asyncio import Redis

from service.core.clock import iso, now_ms
from service.stores.keys import connection as key

# ARGV: status, at (ms), companyId, connectionId, eventType, now (ms), authoritative ("1": Codat's
# own answer, which is the truth as of now), first link ("1": the event says the connection was
# linked for the first time). The first-link mark, and the time the event gives for it, is kept
# whatever the outcome: a stale `connection.connected` still says the connection was once linked
# for the first time.
# Returns {outcome, status now, initialSync, firstLinkSeen}.
_APPLY = """
local current, current_at, sync, seen = unpack(redis.call('HMGET', KEYS[1], 'status', 'statusAt',
                                                           'initialSync', 'firstLinkSeen'))
current_at = tonumber(current_at or '-1')
local at = tonumber(ARGV[2])
local outcome = 'applied'
if ARGV[7] == '1' then
  at = math.max(at, current_at)
elseif at < current_at then
  outcome = 'stale'
elseif at == current_at and current and current ~= ARGV[1] then
  outcome = 'tied'
end
if ARGV[8] == '1' and current and not seen then
  redis.call('HSET', KEYS[1], 'firstLinkSeen', '1', 'firstLinkAt', ARGV[2])
  seen = '1'
end
if outcome ~= 'applied' then return {outcome, current or false, sync or false, seen or false} end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'statusAt', at, 'companyId', ARGV[3],
           'connectionId', ARGV[4], 'lastEventType', ARGV[5], 'updatedAt', ARGV[6])
if ARGV[8] == '1' and not seen then
  redis.call('HSET', KEYS[1], 'firstLinkSeen', '1', 'firstLinkAt', ARGV[2])
  seen = '1'
end
return {outcome, ARGV[1], sync or false, seen or false}
"""

# ARGV: owner, now (ms), lease (ms). A claim is taken only for a connection that was seen linked
# for the first time and is Linked now. A claim left by another owner whose lease ran out (or
# found again by its own owner: a rerun) is taken over as in doubt, whatever the status now, so
# that no claim is ever left behind: "in_doubt" when the connection is Linked (look, then call
# what is missing), "orphaned" when it is not (look, then settle or release; call nothing).
_CLAIM = """
local status, state, seen, owner, lease = unpack(redis.call('HMGET', KEYS[1], 'status', 'initialSync',
    'firstLinkSeen', 'initialSyncOwner', 'initialSyncLeaseUntil'))
local now = tonumber(ARGV[2])
if state == 'requested' then return 'done' end
if state == 'claimed' then
  if owner ~= ARGV[1] and tonumber(lease or '0') > now then return 'busy' end
  redis.call('HSET', KEYS[1], 'initialSyncOwner', ARGV[1], 'initialSyncLeaseUntil', now + ARGV[3])
  if status == 'Linked' then return 'in_doubt' end
  return 'orphaned'
end
if seen ~= '1' then return 'not_first_linked' end
if status ~= 'Linked' then return 'not_linked' end
redis.call('HSET', KEYS[1], 'initialSync', 'claimed', 'initialSyncOwner', ARGV[1],
           'initialSyncLeaseUntil', now + ARGV[3], 'initialSyncClaimedAt', now)
return 'claimed'
"""

# ARGV: owner, now (ms). Settle (requested) or release (forget) a claim, if still the owner's.
_SETTLE = """
if redis.call('HGET', KEYS[1], 'initialSyncOwner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'initialSync', 'requested', 'initialSyncRequestedAt', ARGV[2])
redis.call('HDEL', KEYS[1], 'initialSyncOwner', 'initialSyncLeaseUntil')
return 1
"""
_RELEASE = """
if redis.call('HGET', KEYS[1], 'initialSyncOwner') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'initialSync', 'initialSyncOwner', 'initialSyncLeaseUntil',
           'initialSyncClaimedAt')
return 1
"""


class Applied(NamedTuple):
    outcome: str  # "applied" | "stale" | "tied"
    status: str | None  # the status now
    initial_sync: str | None  # None | "claimed" | "requested"
    first_link_seen: bool

    @property
    def initial_sync_due(self) -> bool:
        """Worth a claim: a first-linked connection that is Linked now and never synced, or a
        claim that may have been left behind by a failed or killed job."""
        if self.initial_sync == "requested":
            return False
        return self.initial_sync == "claimed" or (self.first_link_seen and self.status == "Linked")


class ConnectionStore:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._apply = redis.register_script(_APPLY)
        self._claim = redis.register_script(_CLAIM)
        self._settle = redis.register_script(_SETTLE)
        self._release = redis.register_script(_RELEASE)

    async def apply(
        self,
        *,
        connection_id: str,
        company_id: str,
        status: str,
        at_ms: int,
        event_type: str,
        authoritative: bool = False,
        first_link: bool = False,
    ) -> Applied:
        """Write `status` as of `at_ms` unless a newer event wrote the current one, and keep the
        first-link mark whatever the outcome."""
        outcome, current, sync, seen = await self._apply(
            keys=[key(connection_id)],
            args=[status, at_ms, company_id, connection_id, event_type, now_ms(), int(authoritative), int(first_link)],
        )
        return Applied(_text(outcome), _text(current) if current else None, _text(sync) if sync else None, bool(seen))

    async def claim_initial_sync(self, connection_id: str, owner: str, lease_ms: int) -> str:
        """ "claimed", "in_doubt" (call outcome unknown: look first), "orphaned" (in doubt, and
        not Linked now), "busy", "done", "not_first_linked" or "not_linked"."""
        return _text(await self._claim(keys=[key(connection_id)], args=[owner, now_ms(), lease_ms]))

    async def settle_initial_sync(self, connection_id: str, owner: str) -> bool:
        return bool(await self._settle(keys=[key(connection_id)], args=[owner, now_ms()]))

    async def release_initial_sync(self, connection_id: str, owner: str) -> bool:
        return bool(await self._release(keys=[key(connection_id)], args=[owner, now_ms()]))

    async def claimed_at(self, connection_id: str) -> int | None:
        value = await self._redis.hget(key(connection_id), "initialSyncClaimedAt")
        return int(value) if value is not None else None

    async def first_link_at(self, connection_id: str) -> int | None:
        """When the first link happened, as the event that told of it says."""
        value = await self._redis.hget(key(connection_id), "firstLinkAt")
        return int(float(value)) if value is not None else None

    async def get(self, connection_id: str) -> dict[str, Any] | None:
        """The reconciled state, as /ops shows it."""
        raw = await self._redis.hgetall(key(connection_id))
        if not raw:
            return None
        fields = {_text(k): _text(v) for k, v in raw.items()}
        requested = fields.get("initialSyncRequestedAt")
        status_at = fields.get("statusAt")
        return {
            "connectionId": fields.get("connectionId", connection_id),
            "companyId": fields.get("companyId"),
            "status": fields.get("status"),
            "statusAt": iso(int(status_at)) if status_at else None,
            "lastEventType": fields.get("lastEventType"),
            "updatedAt": iso(int(fields["updatedAt"])) if fields.get("updatedAt") else None,
            "firstLinkSeen": fields.get("firstLinkSeen") == "1",
            "initialSync": fields.get("initialSync"),
            "initialSyncRequestedAt": iso(int(requested)) if requested else None,
        }


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
