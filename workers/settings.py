"""The worker, assembled in this one place: arq's settings as a plain class (the values that
never change), and `create_worker`, which adds what comes from the environment (Settings) and
turns it all into arq's keyword arguments. `startup` builds what every job works with (Deps),
once and complete; each job function takes it from arq's `ctx` as a typed Job (workers.job)."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

import orjson
import structlog
from arq import cron, func
from arq.worker import get_kwargs

from service.core.config import Settings
from service.stores.keys import (
    ARQ_MAX_TRIES,
    CHECK_INITIAL_PULLS,
    JOB_TTL_MS,
    PROCESS_EVENT,
    QUEUE_NAME,
    RECONCILE_PAGE,
    RUN_HANDLER,
    deserialize_job,
)
from service.stores.replication import Replication
from workers import metrics
from workers.delivery_watch import delivery_watch_tick
from workers.deps import Deps
from workers.handlers import Dispatcher, by_name, load, run_handler
from workers.initial_sync import check_initial_pulls
from workers.jobs import process_event
from workers.reconcile import reconcile_page, reconcile_tick
from workers.redis_settings import redis_settings
from workers.worker import ResilientWorker

log = structlog.get_logger(__name__)


async def startup(ctx: dict[str, Any]) -> None:
    """Deps into arq's ctx, for every job to take as its Job (workers.job); the handlers' dispatcher."""
    settings: Settings = ctx["settings"]
    # Loaded first, so that Deps is built once with them (a refusal raises before anything is built).
    registry = load(settings.handlers) if settings.handlers else {}
    ctx["deps"] = deps = Deps.build(settings, ctx["redis"], handlers=by_name(registry))
    if registry:
        consumer = f"worker-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        dispatcher = Dispatcher(ctx["redis"], settings.events_stream, registry, consumer, Replication.of(settings))
        ctx["_dispatcher"] = asyncio.create_task(dispatcher.run())
        log.info("handlers.loaded", module=settings.handlers, handlers=sorted(deps.handlers))
    await deps.reconciles.mark_deployed()
    metrics.RECONCILE_INTERVAL.set(settings.reconcile_interval_seconds)
    metrics.serve(settings.worker_metrics_port)


async def shutdown(ctx: dict[str, Any]) -> None:
    if dispatcher := ctx.get("_dispatcher"):
        dispatcher.cancel()
    deps: Deps = ctx["deps"]
    await deps.aclose()


async def clear_job_context(ctx: dict[str, Any]) -> None:
    structlog.contextvars.clear_contextvars()


class WorkerSettings:
    # The function name is the one the web process writes into every job (service.stores.keys).
    # An event job's result is never read (its outcome is logged and counted): not kept, which
    # saves serialising the whole event back into Redis once per job.
    functions = [
        func(process_event, name=PROCESS_EVENT, keep_result=0),
        func(reconcile_page, name=RECONCILE_PAGE),
        func(check_initial_pulls, name=CHECK_INITIAL_PULLS, keep_result=3600),
        # kept an hour: the handler dispatcher relies on arq refusing a job id it still holds
        func(run_handler, name=RUN_HANDLER, keep_result=3600),
    ]
    queue_name = QUEUE_NAME
    on_startup = startup
    on_shutdown = shutdown
    on_job_start = clear_job_context
    # The web process writes a delivery's job as compressed JSON, the rest of the service as JSON
    # (service.stores.keys); results and retries are written as JSON.
    job_serializer = orjson.dumps
    job_deserializer = staticmethod(deserialize_job)
    # The fallback poll: a worker is woken when work arrives and when a deferred job comes due
    # (workers.worker), and polls at least this often for what no message announces (a job
    # whose worker was killed, coming due again when its in-progress key expires).
    poll_delay = 0.05
    # Jobs mostly wait on Redis and Codat: with Redis ~2 ms away, 50 at once keep a worker
    # CPU-bound (make bench: 20 -> 50 took one worker from ~780 to ~1,400 events/s).
    max_jobs = 50
    max_tries = ARQ_MAX_TRIES
    keep_result = 60
    expires_extra_ms = JOB_TTL_MS
    health_check_interval = 10


def create_worker(settings: Settings, *, burst: bool = False) -> ResilientWorker:
    return ResilientWorker(
        **get_kwargs(WorkerSettings),  # type: ignore[arg-type]
        redis_settings=redis_settings(settings.redis_url),
        burst=burst,
        job_timeout=settings.job_timeout_seconds,
        # On SIGTERM, running jobs get WORKER_SHUTDOWN_WAIT (30 s) to finish before arq cancels
        # them and puts them back on the queue. Kubernetes' grace period is set above it
        # (deploy/kubernetes/worker.yaml).
        job_completion_wait=settings.shutdown_wait_seconds,
        cron_jobs=reconcile_ticks(settings.reconcile_interval_seconds) + watch_ticks(settings.watch_interval_seconds),
        ctx={"settings": settings},
    )


def reconcile_ticks(interval_seconds: int) -> list[Any]:
    """arq cron for the reconcile: each tick some worker asks "is a run due?" (one read when it
    is not). arq's cron job ids are unique per tick, so one worker runs it however many there
    are. A tick a minute, or one per interval when that is shorter; none when it is 0 (off)."""
    if not interval_seconds:
        return []
    every = min(60, interval_seconds)
    return [cron(reconcile_tick, second=set(range(0, 60, every)), run_at_startup=True, timeout=30)]


def watch_ticks(interval_seconds: int) -> list[Any]:
    """arq cron for the delivery watch (workers.delivery_watch), ticking as the reconcile's does:
    each tick asks "is a run due?" (one SET NX), one run per interval across all workers."""
    if not interval_seconds:
        return []
    every = min(60, interval_seconds)
    # No timeout of its own: arq keeps every job's in-progress key for the longest function timeout
    # + 10 s, so a longer one here would delay the rerun of any job whose worker was killed. The
    # run bounds its own Codat call (workers.delivery_watch).
    return [cron(delivery_watch_tick, second=set(range(0, 60, every)), run_at_startup=True)]
