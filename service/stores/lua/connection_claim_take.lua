-- The initial-sync claim's decision (service.stores.connections), included by connection_claim and
-- connection_apply: `-- include: connection_claim_take`. A claim is taken only for a connection
-- seen linked for the first time and Linked now; one left by another owner whose lease ran out (or
-- found again by its own owner: a rerun) is taken over as in doubt, whatever the status now, so
-- that no claim is ever left behind: "in_doubt" when Linked (look, then call what is missing),
-- "orphaned" when not (look, then settle or release; call nothing).
-- take_claim(status, initialSync, firstLinkSeen, holder, lease end, owner, now, lease_ms) returns
-- the outcome ("claimed", "in_doubt", "orphaned", "busy", "done", "not_first_linked", "not_linked")
-- and the hash fields to write for it (a flat list: the caller writes them with its own HSET).
local function take_claim(status, state, seen, holder, lease, owner, now, lease_ms)
  if state == 'requested' then return 'done', {} end
  local until_ms = now + tonumber(lease_ms)
  if state == 'claimed' then
    if holder ~= owner and tonumber(lease or '0') > now then return 'busy', {} end
    local fields = {'initialSyncOwner', owner, 'initialSyncLeaseUntil', until_ms}
    if status == 'Linked' then return 'in_doubt', fields end
    return 'orphaned', fields
  end
  if seen ~= '1' then return 'not_first_linked', {} end
  if status ~= 'Linked' then return 'not_linked', {} end
  return 'claimed', {'initialSync', 'claimed', 'initialSyncOwner', owner, 'initialSyncLeaseUntil', until_ms,
                     'initialSyncClaimedAt', now}
end
