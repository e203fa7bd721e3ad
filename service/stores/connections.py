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

import orjson
from redis.asyncio import Redis

from service.core.clock import iso, now_ms
from service.stores import keys
from service.stores.keys import HISTORY_LENGTH, HISTORY_TTL_MS
from service.stores.keys import connection as key
from service.stores.outbox import EMIT, Outbox
from service.stores.replication import PRIMARY_ONLY, Replication, execute

# KEYS: the connection, its history, the lifecycle stream, the company's connections, company
# names. ARGV: status, at (ms), companyId, connectionId, eventType, now (ms), authoritative ("1":
# Codat's own answer, the truth as of now), first link ("1": the event says the connection was
# linked for the first time), webhook id, occurredAt (ISO), company name, then Outbox.args, then
# when the first link happened as far as the event can tell (ms).
# The first-link mark, and the time the event gives for it, is kept whatever the outcome: a
# stale `connection.connected` still says the connection was once linked for the first time.
# Each call leaves one history entry; a change emits its lifecycle event before it is written.
# Returns {outcome, status now, initialSync, firstLinkSeen, the event types emitted (a list)}.
_APPLY = (
    (
        EMIT
        + """
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
if outcome == 'tied' then return {outcome, current, sync or false, seen or false, {}} end
local newly_linked = ARGV[8] == '1' and not seen
local kinds = {}
if newly_linked then kinds[#kinds + 1] = 'connection.linked' end
-- The reconcile's first sight of a connection (no state here yet) is not a change to tell of.
if outcome == 'applied' and current ~= ARGV[1] and (current or ARGV[5] ~= 'reconcile') then
  if ARGV[1] == 'Linked' and not newly_linked then kinds[#kinds + 1] = 'connection.relinked'
  elseif ARGV[1] == 'Unlinked' then kinds[#kinds + 1] = 'connection.unlinked'
  elseif ARGV[1] == 'Deauthorized' then kinds[#kinds + 1] = 'connection.deauthorized'
  elseif ARGV[1] == 'Deleted' then kinds[#kinds + 1] = 'connection.deleted' end
end
local status_now = outcome == 'applied' and ARGV[1] or current
for i, kind in ipairs(kinds) do
  emit(KEYS[3], ARGV[12], ARGV[13] .. '.' .. i, kind, {
    companyId = ARGV[3], connectionId = ARGV[4], status = status_now, previousStatus = current or nil,
    occurredAt = ARGV[10], derivedAt = ARGV[14], webhookId = ARGV[9], codatEventType = ARGV[5]})
end
redis.call('LPUSH', KEYS[2], cjson.encode({at = tonumber(ARGV[6]), eventAt = tonumber(ARGV[2]),
  from = current or nil, to = ARGV[1], outcome = outcome, authoritative = ARGV[7] == '1',
  eventType = ARGV[5], webhookId = ARGV[9], emitted = kinds}))
redis.call('LTRIM', KEYS[2], 0, HISTORY_LAST)
redis.call('PEXPIRE', KEYS[2], HISTORY_TTL_MS)
redis.call('SADD', KEYS[4], ARGV[4])
if ARGV[11] ~= '' then redis.call('HSET', KEYS[5], ARGV[3], ARGV[11]) end
if newly_linked then
  redis.call('HSET', KEYS[1], 'firstLinkSeen', '1', 'firstLinkAt', ARGV[15])
  seen = '1'
end
if outcome == 'stale' then return {outcome, current, sync or false, seen or false, kinds} end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'statusAt', at, 'companyId', ARGV[3],
           'connectionId', ARGV[4], 'lastEventType', ARGV[5], 'updatedAt', ARGV[6])
return {outcome, ARGV[1], sync or false, seen or false, kinds}
"""
    )
    .replace("HISTORY_LAST", str(HISTORY_LENGTH - 1))
    .replace("HISTORY_TTL_MS", str(HISTORY_TTL_MS))
)

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
# Settle: KEYS: the connection, the lifecycle stream. ARGV: owner, now (ms), the event's own
# fields (JSON), then Outbox.args. Emits sync.initial_requested with the settlement.
_SETTLE = (
    EMIT
    + """
if redis.call('HGET', KEYS[1], 'initialSyncOwner') ~= ARGV[1] then return 0 end
local fields = cjson.decode(ARGV[3])
fields['companyId'], fields['connectionId'] = unpack(redis.call('HMGET', KEYS[1], 'companyId', 'connectionId'))
fields['derivedAt'] = ARGV[6]
emit(KEYS[2], ARGV[4], ARGV[5], 'sync.initial_requested', fields)
redis.call('HSET', KEYS[1], 'initialSync', 'requested', 'initialSyncRequestedAt', ARGV[2])
redis.call('HDEL', KEYS[1], 'initialSyncOwner', 'initialSyncLeaseUntil')
return 1
"""
)
_EXPIRE = """
if redis.call('HGET', KEYS[1], 'initialSyncOwner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'initialSyncLeaseUntil', 0)
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
    emitted: tuple[str, ...] = ()  # the lifecycle events this change wrote

    @property
    def initial_sync_due(self) -> bool:
        """Worth a claim: a first-linked connection that is Linked now and never synced, or a
        claim that may have been left behind by a failed or killed job."""
        if self.initial_sync == "requested":
            return False
        return self.initial_sync == "claimed" or (self.first_link_seen and self.status == "Linked")


class ConnectionStore:
    def __init__(self, redis: Redis, outbox: Outbox | None = None, replication: Replication = PRIMARY_ONLY) -> None:
        self._redis = redis
        self._outbox = outbox or Outbox()
        self._replication = replication
        self._apply = redis.register_script(_APPLY)
        self._claim = redis.register_script(_CLAIM)
        self._settle = redis.register_script(_SETTLE)
        self._release = redis.register_script(_RELEASE)
        self._expire = redis.register_script(_EXPIRE)

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
        webhook_id: str = "",
        occurred_at: str | None = None,
        company_name: str | None = None,
        first_link_at_ms: int | None = None,
    ) -> Applied:
        """Write `status` as of `at_ms` unless a newer event wrote the current one, and keep the
        first-link mark whatever the outcome. `occurred_at`: the time Codat gives for it."""
        names = [
            key(connection_id),
            keys.connection_history(connection_id),
            self._outbox.stream,
            keys.company_connections(company_id),
            keys.COMPANY_NAMES,
        ]
        outcome, current, sync, seen, emitted = await self._apply(
            keys=names,
            args=[
                status,
                at_ms,
                company_id,
                connection_id,
                event_type,
                now_ms(),
                int(authoritative),
                int(first_link),
                webhook_id,
                occurred_at or iso(at_ms) or "",
                company_name or "",
                *self._outbox.args(),
                first_link_at_ms or at_ms,
            ],
        )
        return Applied(
            _text(outcome),
            _text(current) if current else None,
            _text(sync) if sync else None,
            bool(seen),
            tuple(_text(kind) for kind in emitted or ()),
        )

    async def claim_initial_sync(self, connection_id: str, owner: str, lease_ms: int) -> str:
        """ "claimed", "in_doubt" (call outcome unknown: look first), "orphaned" (in doubt, and
        not Linked now), "busy", "done", "not_first_linked" or "not_linked".

        A claim taken is on REDIS_MIN_REPLICAS replicas before this returns (the caller calls Codat
        next, and a claim lost in a failover would let a rerun call again): else NotReplicated, a
        RedisError, and the job retries."""
        if not self._replication.replicas:
            return _text(await self._claim(keys=[key(connection_id)], args=[owner, now_ms(), lease_ms]))
        pipe = self._redis.pipeline(transaction=False)
        pipe.eval(_CLAIM, 1, key(connection_id), owner, now_ms(), lease_ms)
        (outcome,) = await execute(self._redis, pipe, self._replication)
        return _text(outcome)

    async def settle_initial_sync(self, connection_id: str, owner: str, **details: Any) -> bool:
        """Mark it requested, if the claim is still `owner`'s; `details` go into the lifecycle
        event (mode, dataTypes, recovered, requestedBy, occurredAt)."""
        now = now_ms()
        fields = {"occurredAt": iso(now), **{k: v for k, v in details.items() if v is not None}}
        return bool(
            await self._settle(
                keys=[key(connection_id), self._outbox.stream],
                args=[owner, now, orjson.dumps(fields), *self._outbox.args()],
            )
        )

    async def expire_claim(self, connection_id: str, owner: str) -> bool:
        """End `owner`'s lease now (it failed for good): the next job takes the claim over as
        in doubt, without waiting for the lease."""
        return bool(await self._expire(keys=[key(connection_id)], args=[owner]))

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
