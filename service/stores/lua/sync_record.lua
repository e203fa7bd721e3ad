-- Keep one sync outcome (lua/sync_keep.lua says how) where a job runs outside the worker's
-- batches (service.stores.syncs); a job the worker runs has it kept with its end
-- (lua/jobqueue_finish.lua). Returns 1 when kept, 0 when not.
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
-- include: sync_keep

return keep_sync(syncs, data_type, at, record, codat_event_id, lifecycle, outbox_maxlen, kind, company, event)
