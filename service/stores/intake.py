"""The intake: the arq queue, written by the web process in one round trip, shared under load.

arq's `enqueue_job` spends three round trips (WATCH, EXISTS, MULTI/EXEC) and cannot remember a
message id beyond the life of its job. A Lua script does the dedup and the enqueue atomically
instead, writing the job exactly as arq stores it (the job key and the queue's sorted set), so
the stock arq worker runs it. Jobs are serialised with orjson, not arq's default pickle: the
workers say so in WorkerSettings (`job_serializer` / `job_deserializer`).

Deliveries that arrive while a write is in flight are sent together in the next pipeline
(group commit): at rest a delivery costs one round trip of its own, in a burst many share one.
Each is still answered only once Redis has answered for it.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

from redis.asyncio import Redis

from service.core.config import DEDUP_TTL_SECONDS
from service.core.events import Event
from service.stores import keys
from service.stores.keys import JOB_TTL_MS, QUEUE_NAME, QUEUE_WAKE, serialize_job

# One call for a whole batch. KEYS: the queue, then per event its dedup key and job key.
# ARGV: dedup ttl (s), job ttl (ms), the workers' wake channel, then per event its job id, job
# and score (ms). Returns 1 (queued) or 0 (seen before) per event, in order. A batch that
# queued anything publishes one message, which wakes the waiting workers (workers.worker).
_ENQUEUE_ONCE = """
local queued, any = {}, false
for i = 2, #KEYS, 2 do
  local arg = 4 + (i - 2) / 2 * 3
  if redis.call('SET', KEYS[i], ARGV[arg + 2], 'NX', 'EX', ARGV[1]) then
    redis.call('SET', KEYS[i + 1], ARGV[arg + 1], 'PX', ARGV[2])
    redis.call('ZADD', KEYS[1], ARGV[arg + 2], ARGV[arg])
    queued[#queued + 1] = 1
    any = true
  else
    queued[#queued + 1] = 0
  end
end
if any then
  redis.call('PUBLISH', ARGV[3], '1')
end
return queued
"""


_Pending = tuple[str, str, str, bytes, int, "asyncio.Future[bool]"]
# A script call blocks Redis while it runs: a burst goes out in calls of at most this many.
MAX_BATCH = 256


class Intake:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._pending: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None

    async def enqueue_once(self, event: Event) -> bool:
        """Queue the event for the workers unless its message id was seen. True if queued.
        Raises the Redis error when the write cannot be confirmed, and Unqueueable, before
        anything is written, when the event cannot be serialised."""
        jid = keys.event_job_id(event.message_id)
        job = serialize_job([event.to_dict()], event.received_at_ms)
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((keys.seen(event.message_id), keys.job_key(jid), jid, job, event.received_at_ms, answer))
        if self._flusher is None or self._flusher.done():
            # Its own empty context: it serves many deliveries, so it must not carry the
            # log context (webhook_id, ...) of the one that happened to start it.
            self._flusher = asyncio.create_task(self._flush(), context=contextvars.Context())
        return await answer

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            names: list[Any] = [QUEUE_NAME]
            args: list[Any] = [DEDUP_TTL_SECONDS, JOB_TTL_MS, QUEUE_WAKE]
            for seen_key, job_key, jid, job, score, _ in batch:
                names += (seen_key, job_key)
                args += (jid, job, score)
            try:
                # EVAL, not EVALSHA: it survives a Redis restart that emptied the script
                # cache, and Redis caches the compiled script by its hash all the same.
                results: list[Any] = await self._redis.eval(_ENQUEUE_ONCE, len(names), *names, *args)
            except Exception as exc:  # not confirmed: nobody in the batch may be told "accepted"
                results = [exc] * len(batch)
            for pending, result in zip(batch, results, strict=True):
                answer = pending[-1]
                if answer.done():  # the request went away; Codat's retry will find it deduplicated
                    continue
                if isinstance(result, BaseException):
                    answer.set_exception(result)
                else:
                    answer.set_result(bool(result))
