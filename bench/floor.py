"""The floor for the drain benchmark: arq's stock Worker on arq's stock asyncio loop, with the
settings the service's worker had when the baseline was taken (poll delay 50 ms, 20 jobs at
once, results kept 60 s, orjson jobs, read as the service's workers read them), pinned here so
that the floor does not move when the service's settings do, running a job that does nothing,
over the same backlog.

    REDIS_URL=redis://127.0.0.1:6379/0 python -m bench.floor

arq's own per-job log lines go to stdout at info, as `arq` on the command line writes them.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import orjson
from arq import func
from arq.connections import RedisSettings
from arq.worker import Worker

from service.stores.keys import ARQ_MAX_TRIES, JOB_TTL_MS, PROCESS_EVENT, QUEUE_NAME, deserialize_job


async def nothing(ctx: dict[str, Any], record: dict[str, Any]) -> str:
    return "nothing"


def main() -> None:
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(asctime)s: %(message)s")
    Worker(
        functions=[func(nothing, name=PROCESS_EVENT)],
        queue_name=QUEUE_NAME,
        redis_settings=RedisSettings.from_dsn(os.environ["REDIS_URL"]),
        job_serializer=orjson.dumps,
        job_deserializer=deserialize_job,  # JSON, or a delivery's job as the intake compresses it
        poll_delay=0.05,
        max_jobs=20,
        max_tries=ARQ_MAX_TRIES,
        keep_result=60,
        expires_extra_ms=JOB_TTL_MS,
        health_check_interval=10,
    ).run()


if __name__ == "__main__":
    main()
