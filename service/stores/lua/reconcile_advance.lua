-- Record what a reconcile page found and move the cursor, if the run still holds the lock
-- (service.stores.reconcile). Returns 1 when recorded, 0 when the run lost the lock.
local lock = KEYS[1]
local run = KEYS[2]
local run_id = ARGV[1]
local lease_ms = ARGV[2]   -- the lock's lease, renewed
local page = ARGV[3]       -- the page done
local found = ARGV[4]      -- its counts (JSON)
local next_page = ARGV[5]  -- "0": it was the last

if redis.call('GET', lock) ~= run_id then return 0 end
redis.call('PEXPIRE', lock, lease_ms)
redis.call('HSET', run, 'found:' .. page, found)
if next_page ~= '0' then redis.call('HSET', run, 'page', next_page) end
return 1
