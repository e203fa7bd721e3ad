-- Take the claim on a connection's initial sync (service.stores.connections), on its own: the
-- decision is connection_claim_take's (a connection event's apply takes it in its own call).
-- Returns "claimed", "in_doubt", "orphaned", "busy", "done", "not_first_linked" or "not_linked".
local connection = KEYS[1]  -- the connection's hash
local owner = ARGV[1]       -- who takes it (a job)
local now = ARGV[2]         -- ms
local lease_ms = ARGV[3]    -- how long the claim is the owner's without a word from it

-- include: connection_claim_take

local status, state, seen, holder, lease = unpack(redis.call('HMGET', connection, 'status', 'initialSync',
    'firstLinkSeen', 'initialSyncOwner', 'initialSyncLeaseUntil'))
local outcome, fields = take_claim(status, state, seen, holder, lease, owner, tonumber(now), lease_ms)
if #fields > 0 then redis.call('HSET', connection, unpack(fields)) end
return outcome
