"""The arq queue, written by the web process in one round trip.

arq's `enqueue_job` spends three (WATCH, EXISTS, MULTI/EXEC) and cannot remember a message id
beyond the life of its job. A Lua script does the dedup and the enqueue atomically instead,
writing the job exactly as arq stores it (the job key and the queue's sorted set), so the stock
arq worker runs it. Jobs are serialised with orjson, not arq's default pickle: the workers say
so in WorkerSettings (`job_serializer` / `job_deserializer`).
"""

from __future__ import annotations

from typing import Any

import orjson
from arq.constants import default_queue_name, job_key_prefix
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, TimeoutError
from redis.retry import Retry

from service.config import DEDUP_TTL_SECONDS
from service.events import Event

QUEUE_NAME = default_queue_name
PROCESS_EVENT = "process_event"
# The job outlives the dedup record's horizon, so workers that are down for a day lose nothing
# (arq's default would drop a job not started within 24 hours).
JOB_TTL_MS = DEDUP_TTL_SECONDS * 1000

# KEYS: dedup key, job key, queue. ARGV: score (ms), dedup ttl (s), job, job ttl (ms), job id.
_ENQUEUE_ONCE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
  redis.call('ZADD', KEYS[3], ARGV[1], ARGV[5])
  return 1
end
return 0
"""


def connect(url: str) -> Redis:
    """A client that fails fast: Codat gives up on a delivery after 15 s, so a dead Redis
    must turn into a 503 within a few seconds, not a hang. One retry reconnects a pooled
    connection left broken by a Redis restart; the script is idempotent, so a retry after
    a lost reply only finds the message already recorded."""
    return Redis.from_url(
        url,
        socket_connect_timeout=1.0,
        socket_timeout=2.0,
        retry=Retry(NoBackoff(), 1),
        retry_on_error=[ConnectionError, TimeoutError],
    )


def dedup_key(message_id: str) -> str:
    return f"codat:seen:{message_id}"


def job_id(message_id: str) -> str:
    return f"event:{message_id}"


def serialize_job(function: str, args: list[Any], enqueue_time_ms: int) -> bytes:
    # The layout of arq.jobs.serialize_job; job_try None means "first try".
    return orjson.dumps({"t": None, "f": function, "a": args, "k": {}, "et": enqueue_time_ms})


class Intake:
    def __init__(self, redis: Redis) -> None:
        self._enqueue_once = redis.register_script(_ENQUEUE_ONCE)

    async def enqueue_once(self, event: Event) -> bool:
        """Queue the event for the workers unless its message id was seen. True if queued."""
        now = event.received_at_ms
        jid = job_id(event.message_id)
        job = serialize_job(PROCESS_EVENT, [event.to_dict()], now)
        keys = [dedup_key(event.message_id), job_key_prefix + jid, QUEUE_NAME]
        return bool(await self._enqueue_once(keys=keys, args=[now, DEDUP_TTL_SECONDS, job, JOB_TTL_MS, jid]))
