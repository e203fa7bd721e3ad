-- Take one of a company's slots for a Codat call (service.stores.slots). Tokens whose lease ran
-- out are swept only when they would refuse the call: below the limit they cost nothing, and the
-- key still expires a lease after the last take.
-- Returns 1 when the token took a slot, 0 when all are in use.
local calls = KEYS[1]     -- the company's calls in flight (token -> end of its lease, ms)
local now = ARGV[1]       -- ms
local token = ARGV[2]
local limit = ARGV[3]     -- slots per company
local lease_ms = ARGV[4]

now, limit, lease_ms = tonumber(now), tonumber(limit), tonumber(lease_ms)
local in_flight = redis.call('ZCARD', calls)
if in_flight >= limit then
  in_flight = in_flight - redis.call('ZREMRANGEBYSCORE', calls, '-inf', now)
  if in_flight >= limit then return 0 end
end
redis.call('ZADD', calls, now + lease_ms, token)
redis.call('PEXPIRE', calls, lease_ms)
return 1
