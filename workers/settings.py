"""arq settings: a plain class, as arq expects. Redis comes from REDIS_URL (see service.cli)."""

from __future__ import annotations

from typing import Any

import orjson
import structlog

from service.queue import JOB_TTL_MS, QUEUE_NAME
from workers.jobs import process_event


async def clear_job_context(ctx: dict[str, Any]) -> None:
    structlog.contextvars.clear_contextvars()


class WorkerSettings:
    functions = [process_event]
    queue_name = QUEUE_NAME
    # The web process writes jobs as JSON (service.queue); results and retries use the same.
    job_serializer = orjson.dumps
    job_deserializer = orjson.loads
    # arq's default 0.5 s poll would dominate the time from webhook to Codat call.
    poll_delay = 0.05
    max_jobs = 20
    job_timeout = 60
    keep_result = 60
    expires_extra_ms = JOB_TTL_MS
    on_job_start = clear_job_context
    health_check_interval = 10
