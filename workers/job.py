"""One run of a job, typed. arq hands every job function a dict (`ctx`): each entry point in
workers.settings' functions and crons turns it into a `Job` once, on its first line, and passes
that (or only what it needs of it) on; nothing below an entry point reads `ctx`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from arq.connections import ArqRedis

from service.stores.activity import Count
from service.stores.syncs import Keep
from workers.deps import Deps


@dataclass
class Ending:
    """What a job leaves to be written with its end (workers.worker: one script call for a batch
    of ends), not in a round trip of its own: its sync outcomes to keep, each with what to do
    once it is known whether it was kept (the sync lines are logged then, in the job's context),
    and for the ops console its delivery's trace and the minute's counts."""

    trace: tuple[str, bytes] | None = None
    counts: tuple[Count, ...] = field(default_factory=tuple)
    syncs: list[tuple[Keep, Callable[[bool | None], None]]] = field(default_factory=list)

    def written(self, kept: Sequence[bool | None]) -> None:
        """The end is written: `kept` says, per sync outcome in order, whether it was kept (None:
        not known, service.stores.jobqueue.finish_batch)."""
        for (_, then), was_kept in zip(self.syncs, kept, strict=True):
            then(was_kept)

    def unknown(self) -> None:
        """Whether the end was written is not known (its write failed, or its answer was lost)."""
        for _, then in self.syncs:
            then(None)


# Set by the worker in each job's task before arq's `run_job` (which runs the job function and
# then `finish_job` in that task's context): None where a job runs otherwise (a test calling it).
ENDING: ContextVar[Ending | None] = ContextVar("ending", default=None)


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
    # Where it leaves its sync outcomes, trace and counts for the worker to write with its end
    # (None: the job writes them itself).
    ending: Ending | None = None

    @classmethod
    def of(cls, ctx: dict[str, Any]) -> Job:
        """`ctx` as arq gives it to a job: job_id and job_try from arq, redis its pool, deps
        from workers.settings.startup."""
        return cls(
            id=ctx["job_id"], attempt=ctx.get("job_try", 1), redis=ctx["redis"], deps=ctx["deps"], ending=ENDING.get()
        )
