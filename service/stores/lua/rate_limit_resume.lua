-- Lift the pause on Codat calls, if there is one (service.stores.rate_limit). A reset older (by
-- Codat's time) than the last reached or reset taken is a late delivery and changes nothing.
-- Returns 1 when a pause was lifted, 0 when not.
local pause = KEYS[1]           -- the pause
local lifecycle = KEYS[2]       -- the lifecycle stream
local last_event = KEYS[3]      -- "<ms>:<paused|resumed>" of the last reached or reset taken
local fields = ARGV[1]          -- rate_limit.resumed's fields (JSON)
local outbox_maxlen = ARGV[2]   -- Outbox.args
local event_id = ARGV[3]
local derived_at = ARGV[4]
local schema_version = ARGV[5]
local event_at = ARGV[6]        -- ms: Codat's time for the event

-- include: outbox_emit

local last_at = string.match(redis.call('GET', last_event) or '-1:none', '^(-?%d+):')
if tonumber(event_at) < tonumber(last_at) then return 0 end
redis.call('SET', last_event, event_at .. ':resumed')
if redis.call('EXISTS', pause) == 0 then return 0 end
local event = cjson.decode(fields)
event['derivedAt'] = derived_at
emit(lifecycle, outbox_maxlen, schema_version, event_id, 'rate_limit.resumed', event)
redis.call('DEL', pause)
return 1
