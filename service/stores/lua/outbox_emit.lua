-- The transactional outbox's emit (service.stores.outbox), included by every script that tells
-- of the change it makes: `-- include: outbox_emit` (service.stores.scripts).
-- A script emits *before* it writes its state: a failed XADD leaves both undone.
--
-- emit_encoded(stream, maxlen, kind, company, event): the event as Outbox.encoded wrote it
-- (JSON, its id, type, schema version and derivedAt in it). `company` is a stream field of its
-- own so that a reader can filter without decoding.
local function emit_encoded(stream, maxlen, kind, company, event)
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'type', kind, 'company', company, 'event', event)
end

-- emit(stream, maxlen, schema version, event id, type, fields): the same, for a script that
-- builds the event itself; fields is a Lua table of the event's own fields.
local function emit(stream, maxlen, schema_version, id, kind, fields)
  fields['id'] = id
  fields['type'] = kind
  fields['schemaVersion'] = tonumber(schema_version)
  emit_encoded(stream, maxlen, kind, fields['companyId'] or '', cjson.encode(fields))
end
