"""One run of a job, typed. arq hands every job function a dict (`ctx`): each entry point in
workers.settings' functions and crons turns it into a `Job` once, on its first line, and passes
that (or only what it needs of it) on; nothing below an entry point reads `ctx`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from arq.connections import ArqRedis

from workers.deps import Deps


@dataclass(frozen=True)
class Job:
    # arq's job id: a cron's too (unique per tick). Also the owner of the claims the job takes,
    # so that its rerun finds its own.
    id: str
    # arq's job_try: 1 on the first run, counting every rerun (a retry, a deferral, a crash).
    attempt: int
    # arq's own client, the worker's pool: the jobs a job queues go through it, with the job
    # expiry the worker was given (workers.settings: expires_extra_ms), as arq's own do.
    redis: ArqRedis
    # What the job works with (workers.deps), built once per worker process at startup.
    deps: Deps

    @classmethod
    def of(cls, ctx: dict[str, Any]) -> Job:
        """`ctx` as arq gives it to a job: job_id and job_try from arq, redis its pool, deps
        from workers.settings.startup."""
        return cls(id=ctx["job_id"], attempt=ctx.get("job_try", 1), redis=ctx["redis"], deps=ctx["deps"])
