-- Is the rate-limit pause holding (service.stores.rate_limit)? For a Codat call that names no
-- company; one that does checks it with its slot (company_slot_take).
-- Returns the pause's end (ms) while it holds, else false (nil in the reply).
local pause = KEYS[1]   -- the rate-limit pause
local now = ARGV[1]     -- ms

-- include: rate_limit_paused

return paused_until(pause, tonumber(now))
