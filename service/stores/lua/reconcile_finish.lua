-- End a reconcile run: keep its summary as the last run's and drop the lock and the cursor, if
-- the run still holds the lock (service.stores.reconcile). Returns 1 when done, 0 when not.
local lock = KEYS[1]
local run = KEYS[2]
local last = KEYS[3]     -- the last complete run's summary
local run_id = ARGV[1]
local summary = ARGV[2]  -- JSON

if redis.call('GET', lock) ~= run_id then return 0 end
redis.call('SET', last, summary)
redis.call('DEL', lock, run)
return 1
