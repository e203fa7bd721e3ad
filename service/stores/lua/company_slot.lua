-- One of a company's slots for a Codat call (service.stores.slots), included by company_slot_take
-- and company_lock: `-- include: company_slot`. Tokens whose lease ran out are swept only when
-- they would refuse the call: below the limit they cost nothing, and the key still expires a
-- lease after the last take.
-- slot_free(calls, now, limit) is true when a slot can be taken; take_slot(calls, now, token,
-- lease_ms) takes it (apart, so that a script can check every condition before it writes).
local function slot_free(calls, now, limit)
  local in_flight = redis.call('ZCARD', calls)
  if in_flight < limit then return true end
  return in_flight - redis.call('ZREMRANGEBYSCORE', calls, '-inf', now) < limit
end

local function take_slot(calls, now, token, lease_ms)
  redis.call('ZADD', calls, now + lease_ms, token)
  redis.call('PEXPIRE', calls, lease_ms)
end
