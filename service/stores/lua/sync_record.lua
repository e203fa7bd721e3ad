-- Keep a data type's latest sync outcome for a company (service.stores.syncs). Older news never
-- overwrites newer, and the same news twice (a duplicate, a replay under a new webhook id) is
-- kept and told once. Returns 1 when kept, 0 when not.
local syncs = KEYS[1]           -- the company's hash: data type -> record
local lifecycle = KEYS[2]       -- the lifecycle stream
local data_type = ARGV[1]
local at = ARGV[2]              -- ms
local record = ARGV[3]          -- JSON, with the Codat event's own id as `codatEventId`
local kind = ARGV[4]            -- the lifecycle event's type ("" for none)
local fields = ARGV[5]          -- its fields (JSON)
local outbox_maxlen = ARGV[6]   -- Outbox.args
local event_id = ARGV[7]
local derived_at = ARGV[8]
local schema_version = ARGV[9]

-- include: outbox_emit

local current = redis.call('HGET', syncs, data_type)
if current then
  local kept = cjson.decode(current)
  if tonumber(kept['at']) > tonumber(at) then return 0 end
  if kept['codatEventId'] and kept['codatEventId'] == cjson.decode(record)['codatEventId'] then return 0 end
end
if kind ~= '' then
  local event = cjson.decode(fields)
  event['derivedAt'] = derived_at
  emit(lifecycle, outbox_maxlen, schema_version, event_id, kind, event)
end
redis.call('HSET', syncs, data_type, record)
return 1
