-- Lock the company's data/all for one call, unless an earlier one covered this connection, and
-- name the connections the call will cover (service.stores.companies): read under the lock, as
-- late as can be before the call, so that connections linking together are covered by one.
-- With a slot limit, the call's own guards are taken here too, the round trip before it: the
-- rate-limit pause (rate_limit_paused) and one of the company's slots (company_slot), under the
-- lock's owner as its token; whoever gives the lock back gives the slot back.
-- Returns {"covered"}, {"busy"} (another holds the lock), {"paused", the pause's end (ms)},
-- {"no_slot"} (the company's calls in flight at the limit) or {"locked", the company's other
-- connections Linked now...} (the caller's own connection is covered too, and not listed).
local covered = KEYS[1]              -- the connections a data/all of ours covered (a set)
local lock = KEYS[2]                 -- the company's data/all lock (owner, leased)
local company_connections = KEYS[3]  -- the company's connections (a set of ids)
local calls = KEYS[4]                -- the company's Codat calls in flight (company_slot)
local pause = KEYS[5]                -- the rate-limit pause
local connection_id = ARGV[1]        -- the connection the call is for
local owner = ARGV[2]
local lease_ms = ARGV[3]
local connection_prefix = ARGV[4]    -- a connection's hash is this prefix and its id
local now = ARGV[5]                  -- ms
local slot_limit = ARGV[6]           -- slots per company; "0": take none, nor look at the pause
local slot_lease_ms = ARGV[7]

-- include: rate_limit_paused
-- include: company_slot

if redis.call('SISMEMBER', covered, connection_id) == 1 then return {'covered'} end
local with_slot = slot_limit ~= '0'
now = tonumber(now)
if with_slot then
  local until_ms = paused_until(pause, now)
  if until_ms then return {'paused', until_ms} end
  if not slot_free(calls, now, tonumber(slot_limit)) then return {'no_slot'} end
end
if not redis.call('SET', lock, owner, 'NX', 'PX', lease_ms) then return {'busy'} end
if with_slot then take_slot(calls, now, owner, tonumber(slot_lease_ms)) end
local linked = {'locked'}
for _, id in ipairs(redis.call('SMEMBERS', company_connections)) do
  if id ~= connection_id and redis.call('HGET', connection_prefix .. id, 'status') == 'Linked' then
    linked[#linked + 1] = id
  end
end
return linked
