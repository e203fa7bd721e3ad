-- Take one of a company's slots for a Codat call, sweeping the tokens whose lease ran out first
-- (service.stores.slots). Returns 1 when the token took a slot, 0 when all are in use.
local calls = KEYS[1]     -- the company's calls in flight (token -> end of its lease, ms)
local now = ARGV[1]       -- ms
local token = ARGV[2]
local limit = ARGV[3]     -- slots per company
local lease_ms = ARGV[4]

now, lease_ms = tonumber(now), tonumber(lease_ms)
redis.call('ZREMRANGEBYSCORE', calls, '-inf', now)
if redis.call('ZCARD', calls) >= tonumber(limit) then return 0 end
redis.call('ZADD', calls, now + lease_ms, token)
redis.call('PEXPIRE', calls, lease_ms)
return 1
