-- Give up a company's refresh lock, only if the owner still holds it (service.stores.companies).
-- Returns 1 when deleted, 0 when someone else holds it (or nobody).
local lock = KEYS[1]
local owner = ARGV[1]

if redis.call('GET', lock) == owner then return redis.call('DEL', lock) end
return 0
