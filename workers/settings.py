"""arq settings: a plain class, as arq expects. Redis, the job timeout and everything the jobs
share are filled in from the environment by `codat-webhooks worker` (service.cli)."""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from prometheus_client import start_http_server

from service.config import Settings
from service.connections import ConnectionStore
from service.deadletters import DeadLetters
from service.queue import JOB_TTL_MS, QUEUE_NAME
from service.syncs import SyncStore
from workers.codat import CodatClient
from workers.jobs import MAX_TRIES, process_event
from workers.rate_limit import RateLimitGate

log = structlog.get_logger("workers.settings")


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    redis = ctx["redis"]
    ctx["connections"] = ConnectionStore(redis)
    ctx["dead_letters"] = DeadLetters(redis)
    ctx["syncs"] = SyncStore(redis)
    ctx["codat"] = CodatClient(settings.codat_base_url, settings.codat_api_key or "",
                               before_call=RateLimitGate(redis))
    # arq runs a job killed with its worker again once its in-progress key expires, after the
    # job timeout + 10 s: the initial-sync claim is leased for exactly as long.
    ctx["lease_ms"] = (settings.job_timeout_seconds + 10) * 1000
    ctx["call_budget_seconds"] = settings.job_timeout_seconds - 2
    if settings.worker_metrics_port:
        try:
            start_http_server(settings.worker_metrics_port)
        except OSError as exc:  # a worker without metrics still does its work
            log.error("worker.metrics_port_unavailable", port=settings.worker_metrics_port, error=str(exc))


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["codat"].aclose()


async def clear_job_context(ctx: dict[str, Any]) -> None:
    structlog.contextvars.clear_contextvars()


class WorkerSettings:
    functions = [process_event]
    queue_name = QUEUE_NAME
    on_startup = startup
    on_shutdown = shutdown
    on_job_start = clear_job_context
    # The web process writes jobs as JSON (service.queue); results and retries use the same.
    job_serializer = orjson.dumps
    job_deserializer = orjson.loads
    # arq's default 0.5 s poll would dominate the time from webhook to Codat call.
    poll_delay = 0.05
    max_jobs = 20
    max_tries = MAX_TRIES + 1
    # On SIGTERM, running jobs get WORKER_SHUTDOWN_WAIT (30 s) to finish before arq cancels them
    # and puts them back on the queue: `job_completion_wait`, set by service.cli from Settings.
    # Kubernetes' grace period is set above it (deploy/kubernetes/worker.yaml).
    keep_result = 60
    expires_extra_ms = JOB_TTL_MS
    health_check_interval = 10
