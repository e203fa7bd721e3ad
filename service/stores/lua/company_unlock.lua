-- Record the connections a data/all covered, and give up the company's data/all lock if the owner
-- still holds it (service.stores.companies).
-- Returns 1 when the lock was deleted, 0 when someone else holds it (or nobody).
local covered = KEYS[1]       -- the connections a data/all of ours covered (a set)
local lock = KEYS[2]
local owner = ARGV[1]
local connections = ARGV[2]   -- the connections the call covered (a JSON list; empty: it was not made)
local covered_ttl = ARGV[3]   -- seconds the covered set is kept after the last call

local ids = cjson.decode(connections)
if #ids > 0 then
  redis.call('SADD', covered, unpack(ids))
  redis.call('EXPIRE', covered, covered_ttl)
end
if redis.call('GET', lock) == owner then return redis.call('DEL', lock) end
return 0
