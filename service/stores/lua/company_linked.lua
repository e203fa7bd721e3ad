-- The connections of a company whose reconciled status is Linked (service.stores.companies).
-- Returns their ids.
local company_connections = KEYS[1]  -- the company's connections (a set of ids)
local connection_prefix = ARGV[1]    -- a connection's hash is this prefix and its id

local linked = {}
for _, id in ipairs(redis.call('SMEMBERS', company_connections)) do
  if redis.call('HGET', connection_prefix .. id, 'status') == 'Linked' then linked[#linked + 1] = id end
end
return linked
