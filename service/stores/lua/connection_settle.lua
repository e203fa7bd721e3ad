-- Settle a claim on a connection's initial sync as requested, if it is still the owner's, and
-- emit sync.initial_requested with the settlement (service.stores.connections).
-- Returns 1 when settled, 0 when the claim is no longer the owner's.
local connection = KEYS[1]      -- the connection's hash
local lifecycle = KEYS[2]       -- the lifecycle stream
local owner = ARGV[1]
local now = ARGV[2]             -- ms
local fields = ARGV[3]          -- the event's own fields (JSON)
local outbox_maxlen = ARGV[4]   -- Outbox.args
local event_id = ARGV[5]
local derived_at = ARGV[6]
local schema_version = ARGV[7]

-- include: outbox_emit

if redis.call('HGET', connection, 'initialSyncOwner') ~= owner then return 0 end
local event = cjson.decode(fields)
event['companyId'], event['connectionId'] = unpack(redis.call('HMGET', connection, 'companyId', 'connectionId'))
event['derivedAt'] = derived_at
emit(lifecycle, outbox_maxlen, schema_version, event_id, 'sync.initial_requested', event)
redis.call('HSET', connection, 'initialSync', 'requested', 'initialSyncRequestedAt', now)
redis.call('HDEL', connection, 'initialSyncOwner', 'initialSyncLeaseUntil')
return 1
