-- Record the connections a data/all covered, give up the company's data/all lock if the owner
-- still holds it, and give back the slot its call took under the owner's name, if it took one
-- (service.stores.companies).
-- Returns 1 when the lock was deleted, 0 when someone else holds it (or nobody).
local covered = KEYS[1]       -- the connections a data/all of ours covered (a set)
local lock = KEYS[2]
local calls = KEYS[3]         -- the company's Codat calls in flight (company_slot)
local owner = ARGV[1]
local connections = ARGV[2]   -- the connections the call covered (a JSON list; empty: it was not made)
local covered_ttl = ARGV[3]   -- seconds the covered set is kept after the last call
local slot = ARGV[4]          -- "1": the lock took a slot under the owner's name

if slot == '1' then redis.call('ZREM', calls, owner) end
if connections ~= '[]' then
  local ids = cjson.decode(connections)
  redis.call('SADD', covered, unpack(ids))
  redis.call('EXPIRE', covered, covered_ttl)
end
if redis.call('GET', lock) == owner then return redis.call('DEL', lock) end
return 0
