-- The transactional outbox's emit (service.stores.outbox), included by every script that tells
-- of the change it makes: `-- include: outbox_emit` (service.stores.scripts).
-- emit(stream, maxlen, schema version, event id, type, fields): fields is a Lua table of the
-- event's own fields. `company` is a stream field of its own so that a reader can filter without
-- decoding. A script emits *before* it writes its state: a failed XADD leaves both undone.
local function emit(stream, maxlen, schema_version, id, kind, fields)
  fields['id'] = id
  fields['type'] = kind
  fields['schemaVersion'] = tonumber(schema_version)
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'type', kind,
             'company', fields['companyId'] or '', 'event', cjson.encode(fields))
end
