-- Forget a claim on a connection's initial sync, if it is still the owner's: nothing was asked of
-- Codat, and the next job may claim afresh (service.stores.connections).
-- Returns 1 when released, 0 when the claim is no longer the owner's.
local connection = KEYS[1]  -- the connection's hash
local owner = ARGV[1]

if redis.call('HGET', connection, 'initialSyncOwner') ~= owner then return 0 end
redis.call('HDEL', connection, 'initialSync', 'initialSyncOwner', 'initialSyncLeaseUntil',
           'initialSyncClaimedAt')
return 1
