"""The intake: the arq queue, written by the web process in one round trip, shared under load.

arq's `enqueue_job` spends three round trips (WATCH, EXISTS, MULTI/EXEC) and cannot remember a
message id beyond the life of its job. A Lua script does the dedup and the enqueue atomically
instead, writing the job exactly as arq stores it (the job key and the queue's sorted set), so
the stock arq worker runs it. A delivery's job is arq's layout in JSON (orjson), compressed
with a preset dictionary (keys.serialize_event_job: 0.8 KB of Redis a queued delivery, not 1.6):
the workers read it, or a plain JSON job, with keys.deserialize_job (WorkerSettings'
`job_deserializer`). Workers go out before webs when upgrading: an older worker cannot read the
newer format (docs/operator/deploy.md, "Upgrading").

Deliveries that arrive while a write is in flight are sent together in the next pipeline
(group commit): at rest a delivery costs one round trip of its own, in a burst many share one.
Each is still answered only once Redis has answered for it, and with REDIS_MIN_REPLICAS set,
once that many replicas hold the batch: one WAIT per batch, in the same round trip as the write
(service.stores.replication), so a burst shares its cost too.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

from redis.asyncio import Redis

from service.core.config import DEDUP_TTL_SECONDS
from service.core.events import Event
from service.stores import keys
from service.stores.keys import JOB_TTL_MS, QUEUE_NAME, QUEUE_WAKE, REPLICATION_BARRIER, serialize_event_job
from service.stores.replication import PRIMARY_ONLY, PrimaryWatch, Replication, execute
from service.stores.scripts import Script

_Pending = tuple[str, str, str, bytes, int, "asyncio.Future[bool]"]
# A script call blocks Redis while it runs: a burst goes out in calls of at most this many.
MAX_BATCH = 256
# Batches waiting for their replicas at once (REDIS_MIN_REPLICAS > 0), each on its own connection.
# A WAIT holds its connection for a round trip to the replicas and back; one batch at a time
# would queue every delivery behind the previous batch's wait (python -m bench.replicated, one
# replica on loopback, 2,000/s offered: p99 30-37 ms with one, 3.4-6.7 ms with four, against
# 3.1-3.4 ms without replicas). Without replicas, one batch at a time as before.
MAX_WAITING_BATCHES = 4


class Intake:
    def __init__(
        self, redis: Redis, replication: Replication = PRIMARY_ONLY, dedup_ttl_seconds: int = DEDUP_TTL_SECONDS
    ) -> None:
        self._redis = redis
        self._dedup_ttl = dedup_ttl_seconds  # Settings.dedup_ttl_seconds: past Codat's 14-day Portal replay
        self._replication = replication
        self._enqueue = Script(redis, "intake_enqueue")  # lua/intake_enqueue.lua
        # The role check: a primary the sentinels replaced is left within a second, even when
        # nothing else (a failing WAIT, READONLY) says so.
        self._watch = PrimaryWatch(redis)
        self._pending: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(MAX_WAITING_BATCHES if replication.replicas else 1)
        self._commits: set[asyncio.Task[None]] = set()

    async def enqueue_once(self, event: Event) -> bool:
        """Queue the event for the workers unless its message id was seen. True if queued.
        Raises the Redis error when the write cannot be confirmed, and Unqueueable, before
        anything is written, when the event cannot be serialised."""
        jid = keys.event_job_id(event.message_id)
        job = serialize_event_job(event.to_dict(), event.received_at_ms)
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((keys.seen(event.message_id), keys.job_key(jid), jid, job, event.received_at_ms, answer))
        self._watch.start()
        if self._flusher is None or self._flusher.done():
            # Its own empty context: it serves many deliveries, so it must not carry the
            # log context (webhook_id, ...) of the one that happened to start it.
            self._flusher = asyncio.create_task(self._flush(), context=contextvars.Context())
        return await answer

    async def _flush(self) -> None:
        while self._pending:
            await self._slots.acquire()  # what arrives meanwhile joins the batch
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            commit = asyncio.create_task(self._commit(batch))
            self._commits.add(commit)  # held until done: the loop keeps only weak references
            commit.add_done_callback(self._commits.discard)

    async def _commit(self, batch: list[_Pending]) -> None:
        try:
            names: list[Any] = [QUEUE_NAME, REPLICATION_BARRIER]
            args: list[Any] = [self._dedup_ttl, JOB_TTL_MS, QUEUE_WAKE, int(self._replication.replicas > 0)]
            for seen_key, job_key, jid, job, score, _ in batch:
                names += (seen_key, job_key)
                args += (jid, job, score)
            try:
                results = await self._write(names, args)
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
        finally:
            self._slots.release()

    async def _write(self, names: list[Any], args: list[Any]) -> list[Any]:
        if not self._replication.replicas:
            results: list[Any] = await self._enqueue(batch_keys=names, batch_args=args)
            return results
        # The WAIT on the connection that wrote, in the same round trip (NotReplicated if short).
        pipe = self._redis.pipeline(transaction=False)
        self._enqueue.stage(pipe, batch_keys=names, batch_args=args)
        (results,) = await execute(self._redis, pipe, self._replication)
        return results
