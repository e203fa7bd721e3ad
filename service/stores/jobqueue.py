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

It reads the in-progress keys it builds from the ids it finds, which a script may do on one
Redis primary but not on a cluster: arq does not run on Redis Cluster either (deploy/SCALING.md).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from service.stores.keys import IN_PROGRESS_KEY_PREFIX, QUEUE_NAME

# KEYS[1]: the queue. ARGV: now (ms), most jobs to claim, in-progress ttl (ms), most queue
# entries to look at, the in-progress key prefix.
# Returns {id1, score1, id2, score2, ...} claimed, in queue order, then the next future score
# (or "" when there is none) as the last element.
_CLAIM = """
local now, want, ttl, scan, prefix = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), ARGV[5]
local out, claimed, offset = {}, 0, 0
while claimed < want and offset < scan do
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', offset, 100)
  if #due == 0 then break end
  for i = 1, #due, 2 do
    if redis.call('SET', prefix .. due[i], '1', 'NX', 'PX', ttl) then
      out[#out + 1] = due[i]
      out[#out + 1] = due[i + 1]
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
