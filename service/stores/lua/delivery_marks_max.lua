-- Keep, per field of a hash, the larger of what is there and what is given
-- (service.stores.delivery_health: the last delivery taken per family, from every web process).
-- Returns 1.
local marks = KEYS[1]  -- the hash: family -> ms
local given = ARGV     -- field, value, field, value, ...

for i = 1, #given, 2 do
  local current = tonumber(redis.call('HGET', marks, given[i]) or '0')
  if tonumber(given[i + 1]) > current then redis.call('HSET', marks, given[i], given[i + 1]) end
end
return 1
