"""Jobs that failed for good: kept with their reason until someone replays them.

A dead letter is the event record plus why it failed. Replay puts the event back on the queue
as a new job (a new job id, the same message id) and removes the letter in one script, so a
letter is never both listed and queued, nor queued twice by two replays at once.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from redis.asyncio import Redis

from service.stores import keys
from service.stores.keys import DEAD_LETTERS as LETTERS
from service.stores.keys import DEAD_LETTERS_BY_TIME as BY_TIME
from service.stores.keys import JOB_TTL_MS, QUEUE_NAME, serialize_job

# KEYS: letters, by-time, queue, job key. ARGV: letter id, job, job ttl (ms), job id, score (ms).
_REPLAY = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SET', KEYS[4], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[4])
return 1
"""


class DeadLetters:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._replay = redis.register_script(_REPLAY)

    async def add(
        self,
        record: dict[str, Any],
        *,
        reason: str,
        error: str,
        job_id: str | None,
        attempts: int | None,
        status: int | None = None,
        job: tuple[str, list[Any]] | None = None,
    ) -> str:
        """`record`: the event as the job had it. `job`: (function, args) a replay queues, when
        it is not process_event(record) (a handler call: workers.handlers)."""
        letter_id = uuid.uuid4().hex
        now = int(time.time() * 1000)
        letter = {
            "id": letter_id,
            "failedAt": now,
            "reason": reason,
            "error": error,
            "status": status,
            "jobId": job_id,
            "attempts": attempts,
            "event": record,
        }
        if job is not None:
            letter["job"] = {"function": job[0], "args": job[1]}
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(LETTERS, letter_id, orjson.dumps(letter))
            pipe.zadd(BY_TIME, {letter_id: now})
            await pipe.execute()
        return letter_id

    async def list(self, limit: int = 100) -> list[dict[str, Any]]:
        """Newest first."""
        ids = await self._redis.zrevrange(BY_TIME, 0, limit - 1)
        if not ids:
            return []
        raw = await self._redis.hmget(LETTERS, ids)
        return [orjson.loads(value) for value in raw if value is not None]

    async def get(self, letter_id: str) -> dict[str, Any] | None:
        raw = await self._redis.hget(LETTERS, letter_id)
        return orjson.loads(raw) if raw is not None else None

    async def count(self) -> int:
        return int(await self._redis.hlen(LETTERS))

    async def replay(self, letter_id: str) -> str | None:
        """Queue the letter's event again; the new job id, or None if there is no such letter."""
        raw = await self._redis.hget(LETTERS, letter_id)
        if raw is None:
            return None
        letter = orjson.loads(raw)
        now = int(time.time() * 1000)
        job_id = keys.replay_job_id(letter_id)
        if "job" in letter:
            job = serialize_job(letter["job"]["args"], now, function=letter["job"]["function"])
        else:
            job = serialize_job([letter["event"]], now)
        done = await self._replay(
            keys=[LETTERS, BY_TIME, QUEUE_NAME, keys.job_key(job_id)], args=[letter_id, job, JOB_TTL_MS, job_id, now]
        )
        return job_id if done else None
