-- Claim up to `want` due jobs of arq's queue at once (service.stores.jobqueue), as arq's
-- `start_jobs` checks one at a time: a job is taken when it is due (score <= now) and its
-- in-progress key did not exist, which is then set with arq's own key, value and timeout.
-- With start = "1", also what arq's `run_job` opens with, per job claimed: GET the job (one MGET
-- for all the claim takes), and count the try (SET 1 NX EX on a first try, INCR + EXPIRE on a
-- later one).
-- Returns {id1, score1, id2, score2, ...} in queue order (with start: {id1, score1, job1 or ""
-- when its key is gone, try1, ...}), then the due jobs it found held by another worker (their
-- ids, then how many), then the next future score last ("" when there is none, or when the
-- claim took all it wanted).
local queue = KEYS[1]
local now = ARGV[1]            -- ms
local want = ARGV[2]           -- most jobs to claim
local ttl = ARGV[3]            -- the in-progress key's (ms): arq's job timeout + its margin
local scan = ARGV[4]           -- most queue entries to look at
local prefix = ARGV[5]         -- arq's in-progress key prefix
local start = ARGV[6]          -- "1": start the jobs too
local job_prefix = ARGV[7]     -- arq's job key prefix
local retry_prefix = ARGV[8]   -- arq's retry counter prefix
local retry_ttl = ARGV[9]      -- the retry counter's (s)
local held = ARGV[10]          -- ids to step over, each followed by a NUL: the jobs the calling
                               -- worker runs now, and those it found held by another lately

-- Jobs in progress stay in the queue until they end: those the caller knows to be held are
-- stepped over here, without a SET NX that would fail (with 50 jobs in flight, most of a
-- claim's commands were those: bench/README.md). Another worker's it did not know of cost a
-- failing SET each, once: they are returned, for the caller to step over for a while.
local skip, skipping = {}, 0
for id in string.gmatch(held, '([^%z]+)%z') do
  skip[id] = true
  skipping = skipping + 1
end

want, scan, start = tonumber(want), tonumber(scan), start == '1'
local out, busy, claimed, offset = {}, {}, 0, 0
local jobs = {}                -- with start: the claimed jobs' keys, read by one MGET at the end
while claimed < want and offset < scan do
  -- The caller's own jobs are the oldest due, mostly: a first page of them and the wanted ones
  -- is often all a claim reads (a page costs the server by its size).
  local due = redis.call('ZRANGEBYSCORE', queue, '-inf', now, 'WITHSCORES', 'LIMIT', offset,
                         math.min(100, want + skipping))
  if #due == 0 then break end
  for i = 1, #due, 2 do
    if skip[due[i]] then
      -- held, as the caller knows
    elseif not redis.call('SET', prefix .. due[i], '1', 'NX', 'PX', ttl) then
      busy[#busy + 1] = due[i]
    else
      out[#out + 1] = due[i]
      out[#out + 1] = due[i + 1]
      if start then
        jobs[#jobs + 1] = job_prefix .. due[i]
        out[#out + 1] = ''       -- the job, once read
        local retry = retry_prefix .. due[i]
        if redis.call('SET', retry, '1', 'NX', 'EX', retry_ttl) then
          out[#out + 1] = 1
        else
          out[#out + 1] = redis.call('INCR', retry)
          redis.call('EXPIRE', retry, retry_ttl)
        end
      end
      claimed = claimed + 1
      if claimed >= want then break end
    end
  end
  offset = offset + #due / 2
end
if #jobs > 0 then
  local read = redis.call('MGET', unpack(jobs))
  for k = 1, #jobs do
    out[4 * k - 1] = read[k] or ''  -- a key gone reads false
  end
end
-- A claim that took all it wanted leaves its caller with no free slot: a slot coming free wakes
-- it, not the next job's due time, so that is not looked up.
local later = {}
if claimed < want then
  later = redis.call('ZRANGEBYSCORE', queue, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
end
for _, id in ipairs(busy) do out[#out + 1] = id end
out[#out + 1] = #busy
out[#out + 1] = later[2] or ''
return out
