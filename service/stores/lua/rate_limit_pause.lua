-- Pause every Codat call until a time (service.stores.rate_limit). A reached older (by Codat's
-- time) than the last reached or reset taken is a late delivery and changes nothing; at the same
-- time, a reset wins. A pause that only repeats (or shortens) the one in force changes nothing
-- and tells nothing. Returns 1 when the pause moved, 0 when not.
local pause = KEYS[1]           -- the pause: until when (ms), expiring then
local lifecycle = KEYS[2]       -- the lifecycle stream
local last_event = KEYS[3]      -- "<ms>:<paused|resumed>" of the last reached or reset taken
local until_ms = ARGV[1]
local now = ARGV[2]             -- ms
local fields = ARGV[3]          -- rate_limit.paused's fields (JSON)
local outbox_maxlen = ARGV[4]   -- Outbox.args
local event_id = ARGV[5]
local derived_at = ARGV[6]
local schema_version = ARGV[7]
local event_at = ARGV[8]        -- ms: Codat's time for the event

-- include: outbox_emit

local last_at, last_kind = string.match(redis.call('GET', last_event) or '-1:none', '^(-?%d+):(%a+)$')
local at = tonumber(event_at)
if at < tonumber(last_at) or (at == tonumber(last_at) and last_kind == 'resumed') then return 0 end
redis.call('SET', last_event, event_at .. ':paused')
local current = tonumber(redis.call('GET', pause) or '0')
if current >= tonumber(until_ms) then return 0 end
local event = cjson.decode(fields)
event['derivedAt'] = derived_at
if current <= tonumber(now) then
  emit(lifecycle, outbox_maxlen, schema_version, event_id, 'rate_limit.paused', event)
end
redis.call('SET', pause, until_ms, 'PX', math.max(1, tonumber(until_ms) - tonumber(now)))
return 1
