-- Settle a claim on a connection's initial sync as requested, if it is still the owner's, and
-- emit sync.initial_requested with the settlement (service.stores.connections). With the company's
-- data/all lock (a data/all was made for it), the same call records the connections that call
-- covered, gives the lock up and gives back the slot the call took with it (company_lock): one
-- round trip after the call, not four.
-- Returns 1 when settled, 0 when the claim is no longer the owner's.
local connection = KEYS[1]      -- the connection's hash
local lifecycle = KEYS[2]       -- the lifecycle stream
local covered = KEYS[3]         -- the company's connections a data/all of ours covered (a set)
local lock = KEYS[4]            -- the company's data/all lock
local calls = KEYS[5]           -- the company's Codat calls in flight (company_slot)
local owner = ARGV[1]
local now = ARGV[2]             -- ms
local event = ARGV[3]           -- the event, encoded (Outbox.encoded) but for companyId and connectionId, read here
local lock_owner = ARGV[4]      -- the data/all lock's owner; "": no data/all was made under it
local slot = ARGV[5]            -- "1": the lock took a slot under its owner's name, given back here
local covered_ids = ARGV[6]     -- the other connections the data/all covered (a JSON list)
local covered_ttl = ARGV[7]     -- seconds the covered set is kept after the last call
local outbox_maxlen = ARGV[8]   -- the lifecycle stream's bound

-- include: outbox_emit

local holder, company_id, connection_id = unpack(redis.call('HMGET', connection, 'initialSyncOwner', 'companyId',
                                                             'connectionId'))
local settled = holder == owner
if settled then
  -- The ids as the state has them, joined to the JSON the store wrote ('{' .. its fields).
  emit_encoded(lifecycle, outbox_maxlen, 'sync.initial_requested', company_id or '',
               '{"companyId":' .. cjson.encode(company_id or '') .. ',"connectionId":' .. cjson.encode(connection_id or '')
               .. ',' .. string.sub(event, 2))
end
if lock_owner ~= '' then
  if slot == '1' then redis.call('ZREM', calls, lock_owner) end
  -- A connection settled here needs no mark (it is done); one whose claim another job took over
  -- does: that job finds it covered rather than calling again.
  local ids = covered_ids == '[]' and {} or cjson.decode(covered_ids)
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
