"""arq's Worker, taking due jobs in batches, woken when work arrives, riding out Redis outages.

Stays on arq: jobs, retries, deferral, timeouts, results, cron and shutdown are arq's own, and
each job runs through arq's `run_job`. Three hooks are missing, so this subclass overrides
`_poll_iteration` (the body of arq's poll loop) and adds what it needs:

- **Batch claim.** arq's `start_jobs` takes one job per four round trips (WATCH, EXISTS, ZSCORE,
  MULTI/PSETEX/EXEC) and every worker reads the same head of the queue, so with Redis a network
  hop away a worker runs ~1 / (4 x round trip) jobs a second and a second worker mostly loses
  races. Here one script call (service.stores.jobqueue) claims up to the free slots' worth of
  due jobs, setting arq's in-progress key with arq's timeout, so workers take disjoint jobs.
  A slot is taken only for a job the script claimed, with no await between, so a Redis error
  can never leak one. In-progress jobs stay in the queue until they end: the claim steps over
  the worker's own untried, and over those it found another worker holding in the last second
  (BUSY_MEMORY_SECONDS), which would each cost a failing SET NX. If the reply to a claim is
  lost, those jobs' in-progress keys expire (job timeout + 10 s) and arq runs them then, as it
  does for a worker killed mid-job.
- **Wake on arrival.** The intake script PUBLISHes on `keys.QUEUE_WAKE` once per batch it
  queues; each worker keeps one subscribed connection and, between iterations, waits for a
  message, a slot coming free, the next deferred job's due time, or the poll delay, whichever
  comes first. Polling stays as the fallback (a message published while a worker reconnects is
  lost; a killed worker's job comes due by expiry, not by a message), so an idle worker makes
  one cheap script call per poll delay and a delivery reaches a worker in about a round trip.
- **Failover.** With a `redis+sentinel://` URL the pool is built here (workers.redis_settings:
  arq's own has no socket timeouts, so a frozen primary would hang the worker), and a role check
  (service.stores.replication.PrimaryWatch) asks the sentinels once a second which node is the
  primary: a primary cut off from them and replaced is left, every connection dropped (the wake
  listener's included), without a restart.
- **Redis outages.** arq lets any Redis error escape `main()`, which ends the process on a
  Redis restart or failover. A poll iteration that meets one logs the outage once
  (`worker.redis_unavailable`), waits with capped exponential backoff and tries again (redis-py
  reconnects on the next command); the first iteration that succeeds logs the recovery once.
  Jobs that were running keep their in-progress keys, so any that could not finish run again
  once the key expires, which the jobs are written to tolerate.

- **Batch start and finish.** arq opens each job with a MULTI of its own (GET the job, INCR and
  EXPIRE the retry counter) and closes it with another (DEL the in-progress, retry and job keys,
  ZREM from the queue and the abort set, SET the result): ten commands and two round trips a
  job. Here the claim starts the jobs it takes in the same script call (jobqueue.claim_and_start:
  arq's `run_job` is handed what its MULTI would have read), and the ends of jobs that finish
  while a finish is being written go together in the next call (jobqueue.finish_batch: one DEL
  and two ZREMs for the batch; group commit, as the intake does). A job still waits for its own
  end to be written before its task ends, so shutdown and a killed worker are as before: a job
  whose end was not written runs again once its in-progress key expires. What the job leaves
  (its sync outcomes to keep, and for the ops console its trace and the minute's counts:
  workers.job.Ending) goes in the same call.

And per job, less CPU: the worker's loop is uvloop; the pool packs commands with hiredis, as
the web's client does (service.stores.client); arq's own "→ job started" / "← job done" info
lines are dropped, because `event.processed` says the same (route, outcome, ids) once.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import time
from typing import Any, cast

import structlog
import uvloop
from arq.connections import ArqRedis
from arq.utils import timestamp_ms, to_ms
from arq.worker import Worker
from redis.asyncio.connection import Connection
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from service.stores import jobqueue
from service.stores.keys import QUEUE_WAKE
from service.stores.replication import PrimaryWatch
from workers.job import ENDING, Ending
from workers.redis_settings import sentinel_pool

log = structlog.get_logger("workers.worker")

OUTAGE_BACKOFF_START_SECONDS = 0.1
OUTAGE_BACKOFF_MAX_SECONDS = 5.0
# Queue entries one claim looks at, at most: enough to step over the jobs every other worker
# holds (in-progress jobs stay in the queue until they finish), bounded so the script stays short.
CLAIM_SCAN = 1000
# How long a job another worker was found to hold is stepped over without being tried (its
# in-progress key SET NX would fail): long enough that a claim a few ms later does not try it
# again, short enough that a job that worker sent back at once (a Retry with no delay) or left
# behind (killed: its key expires after the job timeout) is taken within about a second.
BUSY_MEMORY_SECONDS = 1.0
# One wait for a wake message, shorter than the pool's read timeout (workers.redis_settings).
LISTEN_SECONDS = 1.0
# Job ends written in one script call, at most (the call blocks Redis while it runs).
MAX_FINISH_BATCH = 256

# Set in a job's task only, until arq's `run_job` opens its first pipeline: what the claim
# already read for it (jobqueue.claim_and_start).
_STARTED: contextvars.ContextVar[jobqueue.Claimed | None] = contextvars.ContextVar("started", default=None)


class _StartedPipeline:
    """Stands in for the MULTI arq's `run_job` opens with (GET job, INCR + EXPIRE retry
    counter[, ZREM abort]): the claim script did those, and this answers with what it read."""

    def __init__(self, claimed: jobqueue.Claimed) -> None:
        self._claimed = claimed
        self._abort = False

    async def __aenter__(self) -> _StartedPipeline:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    def get(self, *_: Any) -> None:
        return None

    def incr(self, *_: Any) -> None:
        return None

    def expire(self, *_: Any) -> None:
        return None

    def zrem(self, *_: Any) -> None:
        self._abort = True  # only with allow_abort_jobs, which never starts jobs this way

    async def execute(self) -> list[Any]:
        return [self._claimed.job, self._claimed.job_try, True] + ([0] if self._abort else [])


class _StartingPool:
    """The pool, for the one access `run_job` makes before its first pipeline."""

    def __init__(self, pool: ArqRedis, claimed: jobqueue.Claimed) -> None:
        self._pool = pool
        self._claimed = claimed

    def pipeline(self, transaction: bool = True) -> _StartedPipeline:
        return _StartedPipeline(self._claimed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


_PER_JOB_LINES = ("%6.2fs → ", "%6.2fs ← ")


class _WithoutPerJobLines(logging.Logger):
    """arq's logger, without its '%6.2fs → job(args)' and '%6.2fs ← job ● result' info lines: one
    fact, which `event.processed` writes once with the ids. Retries, failures and the rest stay.
    Dropped before the standard library makes a record of them: a filter gets each record made
    first (two a job, ~6 µs of the worker's CPU: bench/README.md, "Fourth pass")."""

    def info(self, msg: object, *args: Any, **kwargs: Any) -> None:
        if isinstance(msg, str) and msg.startswith(_PER_JOB_LINES):
            return
        super().info(msg, *args, **kwargs)


# arq logs through its module's logger, made when arq was imported: it becomes one of these.
logging.getLogger("arq.worker").__class__ = _WithoutPerJobLines
# The standard library looks up the caller's file and line for every record it makes (arq's,
# aiohttp's); no line of ours renders them (service.core.logs), so skip the stack walk. This is
# the knob the logging documentation gives for it ("Optimization").
logging._srcfile = None


class _HiredisPacked(Connection):
    _packer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        return self._packer.pack(*args)


class ResilientWorker(Worker):
    _outage_since: float | None = None
    _outage_backoff: float = OUTAGE_BACKOFF_START_SECONDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            # arq's Worker takes the current event loop when it is built: make it uvloop's.
            asyncio.set_event_loop(uvloop.new_event_loop())
        super().__init__(*args, **kwargs)
        # arq's poll loop sleeps `poll_delay` between iterations; this worker waits in
        # `_poll_iteration` instead (woken early), so arq's own sleep is none.
        self.wait_s = self.poll_delay_s
        self.poll_delay_s = 0
        self._ready = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._next_due_ms: int | None = None
        # The last claim filled every free slot: more may be due, so a slot coming free wakes.
        self._saturated = False
        self._watch: PrimaryWatch | None = None
        self._finishes: list[tuple[jobqueue.Finish, asyncio.Future[tuple[bool | None, ...]]]] = []
        self._finisher: asyncio.Task[None] | None = None
        # Due jobs another worker holds, as claims found them: job id -> when (monotonic).
        self._busy: dict[str, float] = {}

    @property  # type: ignore[override]
    def pool(self) -> ArqRedis:
        claimed = _STARTED.get()
        if claimed is not None:  # a job's task, at `run_job`'s first line: once
            _STARTED.set(None)
            return cast(ArqRedis, _StartingPool(cast(ArqRedis, self._pool), claimed))
        return cast(ArqRedis, self._pool)

    async def main(self) -> None:
        if self._pool is None and self.redis_settings.sentinel:
            self._pool = await sentinel_pool(
                self.redis_settings,
                job_serializer=self.job_serializer,
                job_deserializer=self.job_deserializer,
                default_queue_name=self.queue_name,
                expires_extra_ms=self.expires_extra_ms,
            )
        await super().main()

    async def _poll_iteration(self) -> None:
        try:
            await self._iteration()
        except (RedisError, OSError) as exc:
            await self._outage(exc)
            return
        if self._outage_since is not None:
            log.warning("worker.redis_recovered", outage_seconds=round(time.monotonic() - self._outage_since, 1))
            self._outage_since = None
            self._outage_backoff = OUTAGE_BACKOFF_START_SECONDS
        await self._wait()

    async def _outage(self, exc: BaseException) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.error("worker.redis_unavailable", error=str(exc) or type(exc).__name__)
        await asyncio.sleep(self._outage_backoff)
        self._outage_backoff = min(OUTAGE_BACKOFF_MAX_SECONDS, self._outage_backoff * 2)

    async def _iteration(self) -> None:
        """arq's `_poll_iteration`, with one claim script call in place of ZRANGEBYSCORE and
        `start_jobs`."""
        if self._listener is None:
            self._start()
        self._ready.clear()  # anything from here on wakes the wait that follows
        free = self.max_jobs - self.job_counter
        if self.burst and self.max_burst_jobs >= 0:
            free = min(free, self.max_burst_jobs - self._jobs_started())
        if self.allow_pick_jobs and free > 0:
            now = time.monotonic()
            if self._busy:
                self._busy = {job_id: at for job_id, at in self._busy.items() if now - at < BUSY_MEMORY_SECONDS}
            args = (
                self.pool,
                timestamp_ms(),
                free,
                int(self.in_progress_timeout_s * 1000),
                CLAIM_SCAN,
                self.queue_name,
                # in progress, here or elsewhere as far as it knows: stepped over, not tried
                itertools.chain(self.tasks, self._busy),
            )
            started: list[jobqueue.Claimed | tuple[str, int]]
            if self.allow_abort_jobs:  # arq's run_job then reads the abort set itself
                due = await jobqueue.claim_due(*args)
                started, self._next_due_ms, busy = list(due.jobs), due.next_due_ms, due.busy
            else:
                claimed = await jobqueue.claim_and_start(*args)
                started, self._next_due_ms, busy = list(claimed.jobs), claimed.next_due_ms, claimed.busy
            self._busy.update(dict.fromkeys(busy, now))
            self._saturated = len(started) == free
            for job in started:
                await self.sem.acquire()  # never waits: a slot is free (job_counter < max_jobs)
                self.job_counter += 1
                context = contextvars.copy_context()
                if isinstance(job, jobqueue.Claimed):
                    job_id, score = job.job_id, job.score
                    context.run(_STARTED.set, job)
                    context.run(ENDING.set, Ending())
                else:
                    job_id, score = job
                task = self.loop.create_task(self.run_job(job_id, score), context=context)
                task.add_done_callback(self._job_done)
                self.tasks[job_id] = task

        if self.allow_abort_jobs:
            await self._cancel_aborted_jobs()

        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                task.result()  # as arq: an error in run_job surfaces here

        await self.heart_beat()

    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        """arq's, with the write joining the next batch (jobqueue.finish_batch); returns once it
        is written, and raises what the write raised."""
        if keep_in_progress is not None:  # a cron job keeps its in-progress key a while: arq's
            await super().finish_job(
                job_id, finish, result_data, result_timeout_s, keep_result_forever, incr_score, keep_in_progress
            )
            return
        ttl = None if keep_result_forever else to_ms(result_timeout_s)
        ending = ENDING.get() or Ending()  # what the job left to write with its end, if it ran here
        syncs = tuple(keep for keep, _ in ending.syncs)
        end = jobqueue.Finish(job_id, finish, result_data or None, ttl, incr_score, ending.trace, ending.counts, syncs)
        written: asyncio.Future[tuple[bool | None, ...]] = self.loop.create_future()
        self._finishes.append((end, written))
        if self._finisher is None or self._finisher.done():
            self._finisher = self.loop.create_task(self._finish_batches(), context=contextvars.Context())
        try:
            kept = await written
        except BaseException:
            # Written or not, nobody knows (a lost reply, a timeout): the outcomes are told all
            # the same, unknown whether kept, so that an alert on sync.failed still fires; a
            # rerun may tell them again.
            ending.unknown()
            raise
        ending.written(kept)

    async def _finish_batches(self) -> None:
        while self._finishes:
            batch, self._finishes = self._finishes[:MAX_FINISH_BATCH], self._finishes[MAX_FINISH_BATCH:]
            try:
                pool = cast(ArqRedis, self._pool)
                kept = await jobqueue.finish_batch(pool, [end for end, _ in batch], self.queue_name)
            except Exception as exc:  # as arq's MULTI failing: each job's run_job raises it
                for _, written in batch:
                    if not written.done():
                        written.set_exception(exc)
            else:
                for (_, written), its_end in zip(batch, kept, strict=True):
                    if written.done():
                        continue
                    if isinstance(its_end, Exception):  # only this end could not be written
                        written.set_exception(its_end)
                    else:
                        written.set_result(its_end)

    def _job_done(self, _: asyncio.Task[Any]) -> None:
        self._release_sem_dec_counter_on_complete()
        if self._saturated:
            self._ready.set()

    async def _wait(self) -> None:
        """Until work arrives, a slot frees, the next deferred job is due, or the poll delay."""
        timeout = self.wait_s
        if self._next_due_ms is not None:
            timeout = max(0.0, min(timeout, (self._next_due_ms - timestamp_ms()) / 1000))
        if self._ready.is_set() or timeout <= 0:
            return
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            pass

    def _start(self) -> None:
        # The pool arq built: let it pack with hiredis from its next connection on.
        pool = self.pool.connection_pool
        if pool.connection_class is Connection:
            pool.connection_class = _HiredisPacked
        self._listener = self.loop.create_task(self._listen())
        self._watch = PrimaryWatch(self.pool)
        self._watch.start()

    async def _listen(self) -> None:
        """One subscribed connection: every message on the wake channel wakes the poll loop.
        Losing it only means polling until it is back."""
        backoff = OUTAGE_BACKOFF_START_SECONDS
        while True:
            pubsub = self.pool.pubsub()
            try:
                await pubsub.subscribe(QUEUE_WAKE)
                backoff = OUTAGE_BACKOFF_START_SECONDS
                while True:
                    # A timeout of its own, under the pool's read timeout: a quiet channel
                    # answers None, not a TimeoutError that would drop the subscription.
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=LISTEN_SECONDS)
                    if message is not None:
                        self._ready.set()
            except (RedisError, OSError):
                await asyncio.sleep(backoff)
                backoff = min(OUTAGE_BACKOFF_MAX_SECONDS, backoff * 2)
            finally:
                try:
                    await pubsub.aclose()
                except (RedisError, OSError):
                    pass

    async def close(self) -> None:
        if self._watch is not None:
            await self._watch.stop()
        if self._listener is not None:
            self._listener.cancel()
            try:
                await self._listener
            except asyncio.CancelledError:
                pass
            except (RedisError, OSError):
                pass
            self._listener = None
        try:
            await super().close()
        except (RedisConnectionError, OSError) as exc:
            # Stopping while Redis is away: the health key expires by itself.
            log.warning("worker.closed_without_redis", error=str(exc))
