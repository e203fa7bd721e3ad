-- Keep a data type's latest sync outcome for a company (service.stores.syncs). Older news never
-- overwrites newer, and the same news twice (a duplicate, a replay under a new webhook id) is
-- kept and told once. Returns 1 when kept, 0 when not.
local syncs = KEYS[1]           -- the company's hash: data type -> record
local lifecycle = KEYS[2]       -- the lifecycle stream
local data_type = ARGV[1]
local at = ARGV[2]              -- ms
local record = ARGV[3]          -- JSON, with the Codat event's own id as `codatEventId`
local codat_event_id = ARGV[4]  -- the same id apart, not to decode the record ("": it has none)
local kind = ARGV[5]            -- the lifecycle event's type ("" for none)
local company = ARGV[6]         -- its company
local event = ARGV[7]           -- the lifecycle event, encoded (Outbox.encoded)
local outbox_maxlen = ARGV[8]   -- the stream's bound

-- include: outbox_emit

local current = redis.call('HGET', syncs, data_type)
if current then
  -- SyncStore writes `at` and `codatEventId` first, so they are read without decoding the
  -- record (this runs once per sync event); a record written otherwise is decoded.
  local kept_at, kept_id = string.match(current, '^{"at":(%d+),"codatEventId":"([^"\\]*)"')
  if not kept_at then
    local kept = cjson.decode(current)
    kept_at, kept_id = kept['at'], kept['codatEventId']
    if kept_id == cjson.null then kept_id = '' end
  end
  if tonumber(kept_at) > tonumber(at) then return 0 end
  if kept_id ~= nil and kept_id == codat_event_id then return 0 end
end
if kind ~= '' then
  emit_encoded(lifecycle, outbox_maxlen, kind, company, event)
end
redis.call('HSET', syncs, data_type, record)
return 1
