-- Counts of what jobs did, per minute, written on their own (service.stores.activity.count_job);
-- the workers write them with the jobs' ends instead (jobqueue_finish.lua).
local minutes = KEYS    -- a minute's hash per count
-- per count: its field, how many, and its minute's expiry (epoch s)
local counts = ARGV

-- include: job_traces

for i = 1, #minutes do
  count(minutes[i], counts[i * 3 - 2], counts[i * 3 - 1], counts[i * 3])
end
return #minutes
