-- End an owner's lease on a connection's initial-sync claim now (its call failed for good): the
-- next job takes the claim over as in doubt without waiting (service.stores.connections).
-- Returns 1 when ended, 0 when the claim is no longer the owner's.
local connection = KEYS[1]  -- the connection's hash
local owner = ARGV[1]

if redis.call('HGET', connection, 'initialSyncOwner') ~= owner then return 0 end
redis.call('HSET', connection, 'initialSyncLeaseUntil', 0)
return 1
