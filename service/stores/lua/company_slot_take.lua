-- Before a Codat call that names a company (service.stores.slots): the rate-limit pause, then one
-- of the company's slots, in one round trip. A paused call takes no slot.
-- Returns {"taken"}, {"busy"} (all slots in use) or {"paused", the pause's end (ms)}.
local calls = KEYS[1]     -- the company's calls in flight (token -> end of its lease, ms)
local pause = KEYS[2]     -- the rate-limit pause (rate_limit_paused)
local now = ARGV[1]       -- ms
local token = ARGV[2]
local limit = ARGV[3]     -- slots per company
local lease_ms = ARGV[4]

-- include: rate_limit_paused
-- include: company_slot

now = tonumber(now)
local until_ms = paused_until(pause, now)
if until_ms then return {'paused', until_ms} end
if not slot_free(calls, now, tonumber(limit)) then return {'busy'} end
take_slot(calls, now, token, tonumber(lease_ms))
return {'taken'}
