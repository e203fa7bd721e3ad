-- A connection's status as of an event, by compare-and-set (service.stores.connections): written
-- only by an event newer than the one that wrote the current status. The first-link mark, and the
-- time the event gives for it, is kept whatever the outcome: a stale `connection.connected` still
-- says the connection was once linked for the first time. Each call leaves one history entry; a
-- change emits its lifecycle events before it is written.
-- With a claim owner, the initial-sync claim is taken in the same call when the result makes the
-- sync due (connection_claim_take): a first link's claim costs no round trip of its own.
-- The history entry and the lifecycle events are JSON the store encoded but for what only this
-- call decides (outcome, from, status, previousStatus, emitted), joined here as text: no table is
-- built or encoded by cjson but for one string each, on the one primary every event goes through.
-- Returns {outcome (applied | stale | tied), status now, initialSync (before any claim here),
-- firstLinkSeen, the event types emitted (a list), the claim's outcome (false: not asked, or not
-- due)}.
local connection = KEYS[1]           -- the connection's hash
local history = KEYS[2]              -- its history (a list, newest first)
local lifecycle = KEYS[3]            -- the lifecycle stream
local company_connections = KEYS[4]  -- the company's connections (a set)
local company_names = KEYS[5]        -- company id -> name (a hash)
local status = ARGV[1]
local event_at = ARGV[2]             -- ms
local company_id = ARGV[3]
local connection_id = ARGV[4]
local event_type = ARGV[5]
local now = ARGV[6]                  -- ms
local authoritative = ARGV[7]        -- "1": Codat's own answer, the truth as of now
local first_link = ARGV[8]           -- "1": the event says the connection was linked for the first time
local company_name = ARGV[9]         -- "" when the event does not give it
local first_link_at = ARGV[10]       -- ms: when the first link happened, as far as the event can tell
local history_last = ARGV[11]        -- the last index of the history kept (HISTORY_LENGTH - 1)
local history_ttl_ms = ARGV[12]      -- the history is kept this long after its last entry
local history_entry = ARGV[13]       -- the entry's fields known before the call: a JSON object, open ('{"at":...,')
local outbox_maxlen = ARGV[14]       -- the lifecycle stream's bound
local event_id = ARGV[15]            -- the events' id (each event emitted appends .1, .2, ...)
local event_fields = ARGV[16]        -- their common fields, derivedAt and schemaVersion: a JSON object's rest ('"companyId":...}')
local claim_owner = ARGV[17]         -- "": take no claim here; else the job taking it
local lease_ms = ARGV[18]            -- the claim's lease

-- include: outbox_emit
-- include: connection_claim_take

local current, current_at, sync, seen, holder, lease = unpack(redis.call('HMGET', connection, 'status',
    'statusAt', 'initialSync', 'firstLinkSeen', 'initialSyncOwner', 'initialSyncLeaseUntil'))
current_at = tonumber(current_at or '-1')
local at = tonumber(event_at)
local outcome = 'applied'
if authoritative == '1' then
  at = math.max(at, current_at)
elseif at < current_at then
  outcome = 'stale'
elseif at == current_at and current and current ~= status then
  outcome = 'tied'
end
if outcome == 'tied' then return {outcome, current, sync or false, seen or false, {}, false} end
local newly_linked = first_link == '1' and not seen
local kinds = {}
if newly_linked then kinds[#kinds + 1] = 'connection.linked' end
-- The reconcile's first sight of a connection (no state here yet) is not a change to tell of.
if outcome == 'applied' and current ~= status and (current or event_type ~= 'reconcile') then
  if status == 'Linked' and not newly_linked then kinds[#kinds + 1] = 'connection.relinked'
  elseif status == 'Unlinked' then kinds[#kinds + 1] = 'connection.unlinked'
  elseif status == 'Deauthorized' then kinds[#kinds + 1] = 'connection.deauthorized'
  elseif status == 'Deleted' then kinds[#kinds + 1] = 'connection.deleted' end
end
local status_now = outcome == 'applied' and status or current
local from = current and (',"from":' .. cjson.encode(current)) or ''
if #kinds > 0 then
  local statuses = ',"status":' .. cjson.encode(status_now) .. (current and (',"previousStatus":' .. cjson.encode(current)) or '')
  for i, kind in ipairs(kinds) do
    emit_encoded(lifecycle, outbox_maxlen, kind, company_id,
                 '{"id":"' .. event_id .. '.' .. i .. '","type":"' .. kind .. '"' .. statuses .. ',' .. event_fields)
  end
end
local emitted = #kinds > 0 and ('["' .. table.concat(kinds, '","') .. '"]') or '[]'
-- LPUSH answers the length: the list is trimmed only once it is longer than kept.
if redis.call('LPUSH', history, history_entry .. '"outcome":"' .. outcome .. '"' .. from .. ',"emitted":' .. emitted .. '}')
    > tonumber(history_last) + 1 then
  redis.call('LTRIM', history, 0, history_last)
end
redis.call('PEXPIRE', history, history_ttl_ms)
redis.call('SADD', company_connections, connection_id)
if company_name ~= '' then redis.call('HSET', company_names, company_id, company_name) end
-- Everything this call changes in the connection's hash, written by one HSET at the end.
local writes = {}
if newly_linked then
  writes = {'firstLinkSeen', '1', 'firstLinkAt', first_link_at}
  seen = '1'
end
if outcome == 'applied' then
  local n = #writes
  writes[n + 1], writes[n + 2], writes[n + 3], writes[n + 4] = 'status', status, 'statusAt', at
  writes[n + 5], writes[n + 6], writes[n + 7], writes[n + 8] = 'companyId', company_id, 'connectionId', connection_id
  writes[n + 9], writes[n + 10], writes[n + 11], writes[n + 12] = 'lastEventType', event_type, 'updatedAt', now
end
-- Due: first-linked, Linked now and never synced, or a claim left behind (Applied.initial_sync_due).
local claim = false
if claim_owner ~= '' and sync ~= 'requested' and (sync == 'claimed' or (seen == '1' and status_now == 'Linked')) then
  local fields
  claim, fields = take_claim(status_now, sync, seen, holder, lease, claim_owner, tonumber(now), lease_ms)
  for _, v in ipairs(fields) do writes[#writes + 1] = v end
end
if #writes > 0 then redis.call('HSET', connection, unpack(writes)) end
return {outcome, status_now, sync or false, seen or false, kinds, claim}
