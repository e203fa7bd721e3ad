-- arq's `finish_job` for a batch of jobs that ended about together (service.stores.jobqueue):
-- per job, DEL its in-progress key; a job that finished also loses its retry counter and job
-- key, leaves the queue and the abort set, and has its result kept (for the ttl given, or for
-- ever); a job to run again moves later in the queue by its score increment. One DEL and two
-- ZREMs for the whole batch. And what the jobs leave: their sync outcomes (sync_keep), kept in
-- the same call as the job's end, and for the ops console (job_traces) their deliveries' traces
-- and the minutes' counts, summed over the batch. Returns, per sync outcome in order, 1 when it
-- was kept, 0 when not.
local queue = KEYS[1]
local aborts = KEYS[2]         -- arq's abort set
-- The in-progress, retry, job and result key prefixes; how many jobs, traces, counts and sync
-- outcomes follow; the traces' ttl (s). Then five per job: its id, "1" when it finished (else
-- it is to run again), its result or "", the result's ttl (ms) or "" (kept for ever), its queue
-- score increment or "". Then per trace: its key and its value (JSON).
-- Then per count: its minute's key, field, how many, the minute's expiry (epoch s).
-- Then per sync outcome, keep_sync's ten arguments in its order.
local ends = ARGV

-- include: job_traces
-- include: outbox_emit
-- include: sync_keep

local in_progress, retry, job, result = ends[1], ends[2], ends[3], ends[4]
local jobs, traces, counts, syncs = tonumber(ends[5]), tonumber(ends[6]), tonumber(ends[7]), tonumber(ends[8])
local trace_ttl = ends[9]
local gone, finished, kept = {}, {}, {}
-- The sync outcomes first: what they write is kept once whatever happens (a rerun keeps nothing
-- twice), so an error in one of them has ended no job yet (the keeps before it stay written;
-- jobqueue.finish_batch then writes each end alone).
local at = 10 + 5 * jobs + 2 * traces + 4 * counts
for i = 1, syncs do
  kept[i] = keep_sync(unpack(ends, at, at + 9))
  at = at + 10
end
at = 10
for _ = 1, jobs do
  local id, done, value, value_ttl, incr = ends[at], ends[at + 1], ends[at + 2], ends[at + 3], ends[at + 4]
  at = at + 5
  gone[#gone + 1] = in_progress .. id
  if done == '1' then
    gone[#gone + 1] = retry .. id
    gone[#gone + 1] = job .. id
    finished[#finished + 1] = id
    if value ~= '' then
      if value_ttl ~= '' then
        redis.call('SET', result .. id, value, 'PX', value_ttl)
      else
        redis.call('SET', result .. id, value)
      end
    end
  elseif incr ~= '' then
    redis.call('ZINCRBY', queue, incr, id)
  end
end
for _ = 1, traces do
  trace(ends[at], trace_ttl, ends[at + 1])
  at = at + 2
end
for _ = 1, counts do
  count(ends[at], ends[at + 1], ends[at + 2], ends[at + 3])
  at = at + 4
end
if #finished > 0 then
  redis.call('ZREM', aborts, unpack(finished))
  redis.call('ZREM', queue, unpack(finished))
end
if #gone > 0 then
  redis.call('DEL', unpack(gone))
end
return kept
