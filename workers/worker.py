"""arq's Worker, riding out Redis outages instead of exiting.

arq's poll loop lets any Redis error escape `main()`, so a Redis restart or failover ends the
worker process with status 1, and an error between "slot taken" and "job started" in
`start_jobs` leaks a slot for good. This subclass changes only that: a poll iteration that
meets a Redis error logs the outage once, waits with capped exponential backoff and tries
again (redis-py reconnects on the next command); the first iteration that succeeds logs the
recovery once. Jobs that were running keep their in-progress keys, so arq runs any job that
could not finish again once its key expires, which the jobs are written to tolerate.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from arq.worker import Worker
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

log = structlog.get_logger("workers.worker")

OUTAGE_BACKOFF_START_SECONDS = 0.1
OUTAGE_BACKOFF_MAX_SECONDS = 5.0


class ResilientWorker(Worker):
    _outage_since: float | None = None
    _outage_backoff: float = OUTAGE_BACKOFF_START_SECONDS

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except (RedisError, OSError) as exc:
            await self._outage(exc)
            return
        if self._outage_since is not None:
            log.warning("worker.redis_recovered", outage_seconds=round(time.monotonic() - self._outage_since, 1))
            self._outage_since = None
            self._outage_backoff = OUTAGE_BACKOFF_START_SECONDS

    async def _outage(self, exc: BaseException) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.error("worker.redis_unavailable", error=str(exc) or type(exc).__name__)
        await asyncio.sleep(self._outage_backoff)
        self._outage_backoff = min(OUTAGE_BACKOFF_MAX_SECONDS, self._outage_backoff * 2)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        # arq takes a slot (semaphore + counter) before its WATCH/MULTI; a Redis error there
        # would keep the slot forever. Start one job at a time so a failure frees exactly it.
        for job_id in job_ids:
            if self.job_counter >= self.max_jobs:
                return
            started = self.tasks.get(job_id.decode())
            try:
                await super().start_jobs([job_id])
            except (RedisError, OSError):
                if self.tasks.get(job_id.decode()) is started:
                    self.job_counter -= 1
                    self.sem.release()
                raise

    async def close(self) -> None:
        try:
            await super().close()
        except (RedisConnectionError, OSError) as exc:
            # Stopping while Redis is away: the health key expires by itself.
            log.warning("worker.closed_without_redis", error=str(exc))
