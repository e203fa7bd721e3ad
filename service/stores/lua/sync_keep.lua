-- Keep a data type's latest sync outcome for a company (service.stores.syncs), included with
-- outbox_emit (before it) by every script that records sync outcomes: `-- include: sync_keep`.
-- Older news never overwrites newer, and the same news twice (a duplicate, a replay under a new
-- webhook id) is kept and told once.
--
-- keep_sync(syncs, data_type, at, record, codat_event_id, lifecycle, maxlen, kind, company,
-- event): `syncs` the company's hash (data type -> record), `at` the outcome's time (ms),
-- `record` its JSON with the Codat event's own id as `codatEventId`, that id apart ("": none),
-- then the lifecycle stream, its bound, and the event keeping it emits (`kind` "" for none;
-- `event` as Outbox.encoded wrote it). Returns 1 when kept, 0 when not.
local function keep_sync(syncs, data_type, at, record, codat_event_id, lifecycle, maxlen, kind, company, event)
  local current = redis.call('HGET', syncs, data_type)
  if current then
    -- SyncStore writes `at` and `codatEventId` first, so they are read without decoding the
    -- record (this runs once per sync event); a record written otherwise is decoded.
    local kept_at, kept_id = string.match(current, '^{"at":(%d+),"codatEventId":"([^"\\]*)"')
    if not kept_at then
      -- An unreadable record is replaced, not an error: the script that keeps it may be the
      -- finish of a whole batch of jobs (lua/jobqueue_finish.lua).
      local readable, kept = pcall(cjson.decode, current)
      if readable and type(kept) == 'table' then
        kept_at, kept_id = kept['at'], kept['codatEventId']
        if kept_id == cjson.null then kept_id = '' end
      end
    end
    if tonumber(kept_at) and tonumber(kept_at) > tonumber(at) then return 0 end
    if kept_id ~= nil and kept_id == codat_event_id then return 0 end
  end
  if kind ~= '' then
    emit_encoded(lifecycle, maxlen, kind, company, event)
  end
  redis.call('HSET', syncs, data_type, record)
  return 1
end
