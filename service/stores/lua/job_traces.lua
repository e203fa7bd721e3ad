-- What a job's end leaves for the ops console, included by every script that writes it
-- (`-- include: job_traces`): the delivery's trace (service.stores.history) and the minute's
-- counts (service.stores.activity). Each write carries its key's expiry, or sets it only when
-- it creates the key, never an EXPIRE per write (bench/README.md: the profile that led here).
--
-- trace(key, ttl, value): the delivery's trace (JSON, one string: one command), kept `ttl` s.
local function trace(key, ttl, value)
  redis.call('SET', key, value, 'EX', ttl)
end

-- count(key, field, n, expire_at): n more in the minute's field; the minute's hash expires at
-- `expire_at` (epoch s), set when the field is new.
local function count(key, field, n, expire_at)
  if redis.call('HINCRBY', key, field, n) == tonumber(n) then
    redis.call('EXPIREAT', key, expire_at)
  end
end
