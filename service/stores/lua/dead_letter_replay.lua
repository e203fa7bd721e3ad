-- Put a dead letter's job back on arq's queue and remove the letter and its index entries, in one
-- step: a letter is never both listed and queued, nor queued twice (service.stores.deadletters).
-- Returns 1 when replayed, 0 when there is no such letter (any more).
local letters = KEYS[1]         -- letter id -> letter (a hash)
local by_time = KEYS[2]         -- letter ids by time of failure
local queue = KEYS[3]           -- arq's queue
local job_key = KEYS[4]         -- the new job's key
local by_webhook = KEYS[5]      -- "<webhook id>\0<letter id>" members
local company_index = KEYS[6]   -- the company's letters (by_time again when the letter has none:
                                -- removing the id from it twice is harmless)
local letter_id = ARGV[1]
local job = ARGV[2]             -- the job, serialised as arq stores it
local job_ttl_ms = ARGV[3]
local job_id = ARGV[4]
local score = ARGV[5]           -- ms: when the job is due
local webhook_member = ARGV[6]  -- its member in by_webhook ("" for none)

if redis.call('HDEL', letters, letter_id) == 0 then return 0 end
redis.call('ZREM', by_time, letter_id)
redis.call('ZREM', by_webhook, webhook_member)
redis.call('ZREM', company_index, letter_id)
redis.call('SET', job_key, job, 'PX', job_ttl_ms)
redis.call('ZADD', queue, score, job_id)
return 1
