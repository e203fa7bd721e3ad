-- Lock the company's data/all for one call, unless an earlier one covered this connection, and
-- name the connections the call will cover (service.stores.companies): read under the lock, as
-- late as can be before the call, so that connections linking together are covered by one.
-- Returns {"covered"}, {"busy"} (another holds the lock) or {"locked", the company's other
-- connections Linked now...} (the caller's own connection is covered too, and not listed).
local covered = KEYS[1]              -- the connections a data/all of ours covered (a set)
local lock = KEYS[2]                 -- the company's data/all lock (owner, leased)
local company_connections = KEYS[3]  -- the company's connections (a set of ids)
local connection_id = ARGV[1]        -- the connection the call is for
local owner = ARGV[2]
local lease_ms = ARGV[3]
local connection_prefix = ARGV[4]    -- a connection's hash is this prefix and its id

if redis.call('SISMEMBER', covered, connection_id) == 1 then return {'covered'} end
if not redis.call('SET', lock, owner, 'NX', 'PX', lease_ms) then return {'busy'} end
local linked = {'locked'}
for _, id in ipairs(redis.call('SMEMBERS', company_connections)) do
  if id ~= connection_id and redis.call('HGET', connection_prefix .. id, 'status') == 'Linked' then
    linked[#linked + 1] = id
  end
end
return linked
