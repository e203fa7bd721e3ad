"""The workers' side of arq's queue: claim a batch of due jobs in one script call.

arq starts jobs one at a time, four round trips each (WATCH, EXISTS, ZSCORE, MULTI/PSETEX/EXEC),
and every worker reads the same head of the queue, so workers race for the same ids. This script
does what arq's `Worker.start_jobs` checks, for up to N jobs at once, atomically: a job is taken
when it is due (its score <= now) and its in-progress key did not exist, which the script then
sets with arq's own key (`arq:in-progress:<id>`), value and timeout. A job another worker holds
is skipped, so two workers take disjoint jobs. The claimed jobs then run through arq's own
`run_job`, unchanged: a worker killed mid-job leaves its in-progress key to expire, and arq runs
the job again, as before.

The script also returns the score of the next job that is not due yet, so that an idle worker
sleeps until then, not a whole poll delay, when a deferred job comes due.

With `start`, the same call also does what arq's `run_job` opens with (its first MULTI: GET the
job, INCR and EXPIRE the retry counter), for every job it claims: a job then costs no round trip
of its own to start, and the first try (the common case) writes its counter with one
`SET NX EX`. And `finish_batch` does what arq's `finish_job` does (a MULTI per job: DEL the
in-progress, retry and job keys, ZREM from the queue and the abort set, SET the result) for a
whole batch of jobs that ended about together, in one script call: one DEL and two ZREMs for
the batch (bench/README.md has the profile that led here).

It reads the in-progress keys it builds from the ids it finds, which a script may do on one
Redis primary but not on a cluster: arq does not run on Redis Cluster either (deploy/SCALING.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from arq.constants import abort_jobs_ss, result_key_prefix, retry_key_prefix
from redis.asyncio import Redis

from service.stores.keys import IN_PROGRESS_KEY_PREFIX, JOB_KEY_PREFIX, QUEUE_NAME

# arq's retry counter lives this long after a try (arq.worker.run_job's 88400 s)
RETRY_TTL_SECONDS = 88400

# KEYS[1]: the queue. ARGV: now (ms), most jobs to claim, in-progress ttl (ms), most queue
# entries to look at, the in-progress key prefix, then "1" to start the jobs too, the job key
# prefix, the retry key prefix and the retry counter's ttl (s).
# Returns {id1, score1, id2, score2, ...} claimed, in queue order (with start: {id1, score1,
# job1 or "" when its key is gone, try1, ...}), then the next future score (or "" when there is
# none) as the last element.
_CLAIM = """
local now, want, ttl, scan, prefix = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), ARGV[5]
local start, job_prefix, retry_prefix, retry_ttl = ARGV[6] == '1', ARGV[7], ARGV[8], ARGV[9]
local out, claimed, offset = {}, 0, 0
while claimed < want and offset < scan do
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', offset, 100)
  if #due == 0 then break end
  for i = 1, #due, 2 do
    if redis.call('SET', prefix .. due[i], '1', 'NX', 'PX', ttl) then
      out[#out + 1] = due[i]
      out[#out + 1] = due[i + 1]
      if start then
        out[#out + 1] = redis.call('GET', job_prefix .. due[i]) or ''
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
local later = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
out[#out + 1] = later[2] or ''
return out
"""


# KEYS[1]: the queue, KEYS[2]: arq's abort set. ARGV: the in-progress, retry, job and result key
# prefixes, then per job: its id, "1" when it finished (else it is to run again), its result or
# "", the result's ttl (ms) or "" (kept forever), and the queue score increment or "".
_FINISH = """
local in_progress, retry, job, result = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local gone, finished = {}, {}
for i = 5, #ARGV, 5 do
  local id = ARGV[i]
  gone[#gone + 1] = in_progress .. id
  if ARGV[i + 1] == '1' then
    gone[#gone + 1] = retry .. id
    gone[#gone + 1] = job .. id
    finished[#finished + 1] = id
    if ARGV[i + 2] ~= '' then
      if ARGV[i + 3] ~= '' then
        redis.call('SET', result .. id, ARGV[i + 2], 'PX', ARGV[i + 3])
      else
        redis.call('SET', result .. id, ARGV[i + 2])
      end
    end
  elseif ARGV[i + 4] ~= '' then
    redis.call('ZINCRBY', KEYS[1], ARGV[i + 4], id)
  end
end
if #finished > 0 then
  redis.call('ZREM', KEYS[2], unpack(finished))
  redis.call('ZREM', KEYS[1], unpack(finished))
end
redis.call('DEL', unpack(gone))
return #gone
"""


@dataclass(frozen=True, slots=True)
class Claimed:
    """A job claimed and started: arq's `run_job` reads `job` and `job_try` instead of its own
    first MULTI. `job` is None when the job key is gone (arq then fails it as expired)."""

    job_id: str
    score: int
    job: bytes | None
    job_try: int


@dataclass(frozen=True, slots=True)
class Finish:
    """One job's end, as arq's `finish_job` gets it (a cron job's is not batched)."""

    job_id: str
    finished: bool
    result: bytes | None = None
    result_ttl_ms: int | None = None
    incr_score: int | None = None


async def claim_and_start(
    redis: Redis, now_ms: int, limit: int, in_progress_ms: int, scan: int, queue: str = QUEUE_NAME
) -> tuple[list[Claimed], int | None]:
    """`claim_due`, and start each job claimed as arq's `run_job` would (its job, its try)."""
    reply: list[Any] = await redis.eval(  # type: ignore[misc]
        _CLAIM,
        1,
        queue,
        now_ms,
        limit,
        in_progress_ms,
        scan,
        IN_PROGRESS_KEY_PREFIX,
        "1",
        JOB_KEY_PREFIX,
        retry_key_prefix,
        RETRY_TTL_SECONDS,
    )
    later = reply.pop()
    claimed = [
        Claimed(reply[i].decode(), int(float(reply[i + 1])), reply[i + 2] or None, int(reply[i + 3]))
        for i in range(0, len(reply), 4)
    ]
    return claimed, int(float(later)) if later else None


async def finish_batch(redis: Redis, finishes: list[Finish], queue: str = QUEUE_NAME) -> None:
    """arq's `finish_job` for every job of `finishes`, in one script call."""
    args: list[Any] = [IN_PROGRESS_KEY_PREFIX, retry_key_prefix, JOB_KEY_PREFIX, result_key_prefix]
    for end in finishes:
        args += (
            end.job_id,
            "1" if end.finished else "0",
            end.result or "",
            "" if end.result_ttl_ms is None else end.result_ttl_ms,
            end.incr_score or "",
        )
    await redis.eval(_FINISH, 2, queue, abort_jobs_ss, *args)  # type: ignore[misc]


async def claim_due(
    redis: Redis, now_ms: int, limit: int, in_progress_ms: int, scan: int, queue: str = QUEUE_NAME
) -> tuple[list[tuple[str, int]], int | None]:
    """Claim up to `limit` due jobs. Returns [(job id, score)] and the next future score (ms)."""
    reply: list[Any] = await redis.eval(  # type: ignore[misc]
        _CLAIM, 1, queue, now_ms, limit, in_progress_ms, scan, IN_PROGRESS_KEY_PREFIX
    )
    later = reply.pop()
    claimed = [(reply[i].decode(), int(float(reply[i + 1]))) for i in range(0, len(reply), 2)]
    return claimed, int(float(later)) if later else None
