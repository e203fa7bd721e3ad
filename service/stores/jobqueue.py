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
of its own to start, the jobs are read by one MGET, and the first try (the common case) writes
its counter with one `SET NX EX`. And `finish_batch` does what arq's `finish_job` does (a MULTI per job: DEL the
in-progress, retry and job keys, ZREM from the queue and the abort set, SET the result) for a
whole batch of jobs that ended about together, in one script call: one DEL and two ZREMs for
the batch, and in the same call what the jobs leave for the ops console (their deliveries'
traces, the minute's counts summed over the batch), which was a round trip of each job's own
(bench/README.md has the profiles that led here).

It reads the in-progress keys it builds from the ids it finds, which a script may do on one
Redis primary but not on a cluster: arq does not run on Redis Cluster either (deploy/SCALING.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

from arq.constants import abort_jobs_ss, result_key_prefix, retry_key_prefix
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from service.stores.activity import Count
from service.stores.keys import IN_PROGRESS_KEY_PREFIX, JOB_KEY_PREFIX, QUEUE_NAME, TRACE_TTL_SECONDS
from service.stores.scripts import Script, text
from service.stores.syncs import SYNC_KEEP_ARGS, Keep

# arq's retry counter lives this long after a try (arq.worker.run_job's 88400 s)
RETRY_TTL_SECONDS = 88400

J = TypeVar("J")

# The two scripts (lua/jobqueue_claim.lua, lua/jobqueue_finish.lua), for whichever client the
# caller holds (the worker's pool, a test's client).
_CLAIM = Script(None, "jobqueue_claim")
_FINISH = Script(None, "jobqueue_finish")


@dataclass(frozen=True, slots=True)
class Claimed:
    """A job claimed and started: arq's `run_job` reads `job` and `job_try` instead of its own
    first MULTI. `job` is None when the job key is gone (arq then fails it as expired)."""

    job_id: str
    score: int
    job: bytes | None
    job_try: int


class Claim(NamedTuple, Generic[J]):
    """What one claim took, in queue order; the next future score (ms; None when there is none,
    or when as many jobs as asked for were taken: the caller has no slot left to wait for it
    with); and the due jobs it found held by another worker (each cost a failing SET NX: the
    caller steps over them in its next claims, for a while)."""

    jobs: list[J]
    next_due_ms: int | None
    busy: list[str]


@dataclass(frozen=True, slots=True)
class Finish:
    """One job's end, as arq's `finish_job` gets it (a cron job's is not batched), and what the
    job leaves: its sync outcomes to keep (syncs.Keep), and for the ops console its delivery's
    trace (key, value: history.trace_value) and its counts (activity.counts)."""

    job_id: str
    finished: bool
    result: bytes | None = None
    result_ttl_ms: int | None = None
    incr_score: int | None = None
    trace: tuple[str, bytes] | None = None
    counts: tuple[Count, ...] = ()
    syncs: tuple[Keep, ...] = ()


async def claim_and_start(
    redis: Redis,
    now_ms: int,
    limit: int,
    in_progress_ms: int,
    scan: int,
    queue: str = QUEUE_NAME,
    held: Iterable[str] = (),
) -> Claim[Claimed]:
    """`claim_due`, and start each job claimed as arq's `run_job` would (its job, its try)."""
    reply, later, busy = await _claim(redis, now_ms, limit, in_progress_ms, scan, queue, held, start=True)
    claimed = [
        Claimed(text(reply[i]), int(float(reply[i + 1])), reply[i + 2] or None, int(reply[i + 3]))
        for i in range(0, len(reply), 4)
    ]
    return Claim(claimed, later, busy)


async def finish_batch(
    redis: Redis, finishes: list[Finish], queue: str = QUEUE_NAME
) -> list[tuple[bool | None, ...] | ResponseError]:
    """arq's `finish_job` for every job of `finishes`, with their sync outcomes, traces and counts
    (the counts summed over the batch), in one script call. Returns, per finish, whether each of
    its sync outcomes was kept (SyncStore.write's answer), or the error the script met writing
    it. One end the script cannot write (its company's sync hash holding another type, say)
    would fail the call for all: each end is then written in a call of its own, and only that
    job's end fails. The failed call may have kept some outcomes already (a keep is never undone,
    and never done twice), so whether the others were kept is not known then: None. A
    connection error raises, for all."""
    try:
        return list(await _finish(redis, finishes, queue))
    except ResponseError as error:
        if len(finishes) == 1:
            return [error]
    results: list[tuple[bool | None, ...] | ResponseError] = []
    for end in finishes:
        try:
            await _finish(redis, [end], queue)
        except ResponseError as own:
            results.append(own)
        else:
            results.append(tuple(None for _ in end.syncs))
    return results


async def _finish(redis: Redis, finishes: list[Finish], queue: str) -> list[tuple[bool, ...]]:
    jobs: list[Any] = []
    traces: list[Any] = []
    syncs: list[Any] = []
    summed: dict[tuple[str, str], list[int]] = {}
    for end in finishes:
        jobs += (
            end.job_id,
            "1" if end.finished else "0",
            end.result or "",
            "" if end.result_ttl_ms is None else end.result_ttl_ms,
            end.incr_score or "",
        )
        if end.trace is not None:
            traces += end.trace
        for minute, field, n, expire_at in end.counts:
            summed.setdefault((minute, field), [0, expire_at])[0] += n
        for keep in end.syncs:
            syncs += keep.args
    counts = [v for (minute, field), (n, expire_at) in summed.items() for v in (minute, field, n, expire_at)]
    ends: list[Any] = [IN_PROGRESS_KEY_PREFIX, retry_key_prefix, JOB_KEY_PREFIX, result_key_prefix]
    ends += (len(finishes), len(traces) // 2, len(summed), len(syncs) // SYNC_KEEP_ARGS, TRACE_TTL_SECONDS)
    reply = await _FINISH.run(redis, queue=queue, aborts=abort_jobs_ss, ends=[*ends, *jobs, *traces, *counts, *syncs])
    kept = iter(reply)
    return [tuple(bool(next(kept)) for _ in end.syncs) for end in finishes]


async def claim_due(
    redis: Redis,
    now_ms: int,
    limit: int,
    in_progress_ms: int,
    scan: int,
    queue: str = QUEUE_NAME,
    held: Iterable[str] = (),
) -> Claim[tuple[str, int]]:
    """Claim up to `limit` due jobs, stepping over `held` (jobs the caller knows are in progress:
    its own, and another worker's it was told of). The jobs are (job id, score)."""
    reply, later, busy = await _claim(redis, now_ms, limit, in_progress_ms, scan, queue, held, start=False)
    return Claim([(text(reply[i]), int(float(reply[i + 1]))) for i in range(0, len(reply), 2)], later, busy)


async def _claim(
    redis: Redis,
    now_ms: int,
    limit: int,
    in_progress_ms: int,
    scan: int,
    queue: str,
    held: Iterable[str],
    *,
    start: bool,
) -> tuple[list[Any], int | None, list[str]]:
    reply: list[Any] = await _CLAIM.raw(
        redis,
        queue=queue,
        now=now_ms,
        want=limit,
        ttl=in_progress_ms,
        scan=scan,
        prefix=IN_PROGRESS_KEY_PREFIX,
        start="1" if start else "0",
        job_prefix=JOB_KEY_PREFIX,
        retry_prefix=retry_key_prefix,
        retry_ttl=RETRY_TTL_SECONDS,
        held="".join(f"{job_id}\0" for job_id in held),
    )
    later, found = reply.pop(), int(reply.pop())
    busy = [text(job_id) for job_id in reply[len(reply) - found :]]
    del reply[len(reply) - found :]
    return reply, int(float(later)) if later else None, busy
