-- Take the claim on a connection's initial sync (service.stores.connections). A claim is taken
-- only for a connection that was seen linked for the first time and is Linked now. A claim left
-- by another owner whose lease ran out (or found again by its own owner: a rerun) is taken over
-- as in doubt, whatever the status now, so that no claim is ever left behind: "in_doubt" when the
-- connection is Linked (look, then call what is missing), "orphaned" when it is not (look, then
-- settle or release; call nothing).
-- Returns "claimed", "in_doubt", "orphaned", "busy", "done", "not_first_linked" or "not_linked".
local connection = KEYS[1]  -- the connection's hash
local owner = ARGV[1]       -- who takes it (a job)
local now = ARGV[2]         -- ms
local lease_ms = ARGV[3]    -- how long the claim is the owner's without a word from it

local status, state, seen, holder, lease = unpack(redis.call('HMGET', connection, 'status', 'initialSync',
    'firstLinkSeen', 'initialSyncOwner', 'initialSyncLeaseUntil'))
now = tonumber(now)
if state == 'requested' then return 'done' end
if state == 'claimed' then
  if holder ~= owner and tonumber(lease or '0') > now then return 'busy' end
  redis.call('HSET', connection, 'initialSyncOwner', owner, 'initialSyncLeaseUntil', now + lease_ms)
  if status == 'Linked' then return 'in_doubt' end
  return 'orphaned'
end
if seen ~= '1' then return 'not_first_linked' end
if status ~= 'Linked' then return 'not_linked' end
redis.call('HSET', connection, 'initialSync', 'claimed', 'initialSyncOwner', owner,
           'initialSyncLeaseUntil', now + lease_ms, 'initialSyncClaimedAt', now)
return 'claimed'
