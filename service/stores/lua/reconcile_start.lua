-- Start a reconcile run, or resume the one a crash left (its lock expired) from its cursor
-- (service.stores.reconcile). Returns {run id, page} of the run now holding the lock, or false
-- when another one holds it.
local lock = KEYS[1]      -- one run at a time (leased)
local run = KEYS[2]       -- the run in progress: id, cursor, counts per page
local run_id = ARGV[1]    -- this run's id, if it is a new one
local lease_ms = ARGV[2]
local now = ARGV[3]       -- ms
local dry_run = ARGV[4]   -- "1": look, change nothing
local company = ARGV[5]   -- one company's id ("" for all)

if redis.call('GET', lock) then return false end
local id = redis.call('HGET', run, 'id')
if not id then
  id = run_id
  redis.call('DEL', run)
  redis.call('HSET', run, 'id', id, 'page', 1, 'startedAt', now, 'dryRun', dry_run, 'company', company)
end
redis.call('SET', lock, id, 'PX', lease_ms)
return {id, redis.call('HGET', run, 'page')}
