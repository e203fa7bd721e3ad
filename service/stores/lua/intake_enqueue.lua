-- The intake's batch (service.stores.intake): for each delivery, unless its message id was seen,
-- remember it and queue its job exactly as arq stores one (the job key and the queue's sorted
-- set), atomically. Returns 1 (queued) or 0 (seen before) per delivery, in order.
-- A batch that queued anything publishes one message on the workers' wake channel
-- (workers.worker). A batch that found a duplicate while replicas must confirm writes the
-- replication barrier, so that its WAIT also covers the original's write
-- (keys.REPLICATION_BARRIER).
--
-- A batch has as many deliveries as arrived together, so both lists are taken whole:
--   KEYS: the queue, the replication barrier, then per delivery its dedup key and its job key
--   ARGV: dedup ttl (s), job ttl (ms), the wake channel, "1" when replicas must confirm, then
--         per delivery its job id, its job (arq's encoding) and its score (ms)
local batch_keys = KEYS
local batch_args = ARGV

local queue, barrier = batch_keys[1], batch_keys[2]
local dedup_ttl, job_ttl, wake, replicated = batch_args[1], batch_args[2], batch_args[3], batch_args[4] == '1'
local queued, any, seen = {}, false, false
for i = 3, #batch_keys, 2 do
  local arg = 5 + (i - 3) / 2 * 3
  local job_id, job, score = batch_args[arg], batch_args[arg + 1], batch_args[arg + 2]
  if redis.call('SET', batch_keys[i], score, 'NX', 'EX', dedup_ttl) then
    redis.call('SET', batch_keys[i + 1], job, 'PX', job_ttl)
    redis.call('ZADD', queue, score, job_id)
    queued[#queued + 1] = 1
    any = true
  else
    queued[#queued + 1] = 0
    seen = true
  end
end
if any then
  redis.call('PUBLISH', wake, '1')
end
if seen and replicated then
  redis.call('INCR', barrier)
end
return queued
