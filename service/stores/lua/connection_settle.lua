-- Settle a claim on a connection's initial sync as requested, if it is still the owner's, and
-- emit sync.initial_requested with the settlement (service.stores.connections). With the company's
-- data/all lock (a data/all was made for it), the same call records the connections that call
-- covered and gives the lock up: one round trip after the call, not three.
-- Returns 1 when settled, 0 when the claim is no longer the owner's.
local connection = KEYS[1]      -- the connection's hash
local lifecycle = KEYS[2]       -- the lifecycle stream
local covered = KEYS[3]         -- the company's connections a data/all of ours covered (a set)
local lock = KEYS[4]            -- the company's data/all lock
local owner = ARGV[1]
local now = ARGV[2]             -- ms
local fields = ARGV[3]          -- the event's own fields (JSON)
local lock_owner = ARGV[4]      -- the data/all lock's owner; "": no data/all was made under it
local covered_ids = ARGV[5]     -- the other connections the data/all covered (a JSON list)
local covered_ttl = ARGV[6]     -- seconds the covered set is kept after the last call
local outbox_maxlen = ARGV[7]   -- Outbox.args
local event_id = ARGV[8]
local derived_at = ARGV[9]
local schema_version = ARGV[10]

-- include: outbox_emit

local holder, company_id, connection_id = unpack(redis.call('HMGET', connection, 'initialSyncOwner', 'companyId',
                                                             'connectionId'))
local settled = holder == owner
if settled then
  local event = cjson.decode(fields)
  event['companyId'], event['connectionId'] = company_id, connection_id
  event['derivedAt'] = derived_at
  emit(lifecycle, outbox_maxlen, schema_version, event_id, 'sync.initial_requested', event)
end
if lock_owner ~= '' then
  -- A connection settled here needs no mark (it is done); one whose claim another job took over
  -- does: that job finds it covered rather than calling again.
  local ids = cjson.decode(covered_ids)
  if not settled and connection_id then ids[#ids + 1] = connection_id end
  if #ids > 0 then
    redis.call('SADD', covered, unpack(ids))
    redis.call('EXPIRE', covered, covered_ttl)
  end
  if redis.call('GET', lock) == lock_owner then redis.call('DEL', lock) end
end
if not settled then return 0 end
redis.call('HSET', connection, 'initialSync', 'requested', 'initialSyncRequestedAt', now)
redis.call('HDEL', connection, 'initialSyncOwner', 'initialSyncLeaseUntil')
return 1
