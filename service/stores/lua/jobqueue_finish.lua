-- arq's `finish_job` for a batch of jobs that ended about together (service.stores.jobqueue):
-- per job, DEL its in-progress key; a job that finished also loses its retry counter and job
-- key, leaves the queue and the abort set, and has its result kept (for the ttl given, or for
-- ever); a job to run again moves later in the queue by its score increment. One DEL and two
-- ZREMs for the whole batch. Returns the number of keys deleted.
local queue = KEYS[1]
local aborts = KEYS[2]         -- arq's abort set
-- The prefixes (in-progress, retry, job, result), then five per job: its id, "1" when it
-- finished (else it is to run again), its result or "", the result's ttl (ms) or "" (kept for
-- ever), its queue score increment or "".
local ends = ARGV

local in_progress, retry, job, result = ends[1], ends[2], ends[3], ends[4]
local gone, finished = {}, {}
for i = 5, #ends, 5 do
  local id, done, value, value_ttl, incr = ends[i], ends[i + 1], ends[i + 2], ends[i + 3], ends[i + 4]
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
if #finished > 0 then
  redis.call('ZREM', aborts, unpack(finished))
  redis.call('ZREM', queue, unpack(finished))
end
redis.call('DEL', unpack(gone))
return #gone
