-- A delivery's trace, written on its own (service.stores.history.record_delivery); the workers
-- write it with the job's end instead (jobqueue_finish.lua).
local key = KEYS[1]     -- the trace
local ttl = ARGV[1]     -- s
local value = ARGV[2]   -- JSON (history.trace_value)

-- include: job_traces

trace(key, ttl, value)
return 1
