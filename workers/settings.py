"""The worker, assembled in this one place: arq's settings as a plain class (the values that
never change), and `create_worker`, which adds what comes from the environment (Settings) and
turns it all into arq's keyword arguments. `startup` builds what every job works with (Deps)."""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from arq import func
from arq.connections import RedisSettings
from arq.worker import get_kwargs

from service.core.config import Settings
from service.stores.keys import ARQ_MAX_TRIES, JOB_TTL_MS, PROCESS_EVENT, QUEUE_NAME
from workers import metrics
from workers.deps import Deps, deps_of
from workers.jobs import process_event
from workers.worker import ResilientWorker


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    ctx["deps"] = Deps.build(settings, ctx["redis"])
    metrics.serve(settings.worker_metrics_port)


async def shutdown(ctx: dict[str, Any]) -> None:
    await deps_of(ctx).aclose()


async def clear_job_context(ctx: dict[str, Any]) -> None:
    structlog.contextvars.clear_contextvars()


class WorkerSettings:
    # The function name is the one the web process writes into every job (service.stores.keys).
    functions = [func(process_event, name=PROCESS_EVENT)]
    queue_name = QUEUE_NAME
    on_startup = startup
    on_shutdown = shutdown
    on_job_start = clear_job_context
    # The web process writes jobs as JSON (service.stores.keys); results and retries use the same.
    job_serializer = orjson.dumps
    job_deserializer = orjson.loads
    # arq's default 0.5 s poll would dominate the time from webhook to Codat call.
    poll_delay = 0.05
    max_jobs = 20
    max_tries = ARQ_MAX_TRIES
    keep_result = 60
    expires_extra_ms = JOB_TTL_MS
    health_check_interval = 10


def create_worker(settings: Settings, *, burst: bool = False) -> ResilientWorker:
    return ResilientWorker(
        **get_kwargs(WorkerSettings),  # type: ignore[arg-type]
        redis_settings=RedisSettings.from_dsn(settings.redis_url),
        burst=burst,
        job_timeout=settings.job_timeout_seconds,
        # On SIGTERM, running jobs get WORKER_SHUTDOWN_WAIT (30 s) to finish before arq cancels
        # them and puts them back on the queue. Kubernetes' grace period is set above it
        # (deploy/kubernetes/worker.yaml).
        job_completion_wait=settings.shutdown_wait_seconds,
        ctx={"settings": settings},
    )
