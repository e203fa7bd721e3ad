"""Jobs that failed for good: kept with their reason until someone replays them.

A dead letter is the event record plus why it failed. Replay puts the event back on the queue
as a new job (a new job id, the same message id) and removes the letter in one script, so a
letter is never both listed and queued, nor queued twice by two replays at once.

Credentials never reach Redis in a letter: an error text is often what an API answered, and
some APIs echo the request's `Authorization` header. Every string of a letter is masked
(service.core.logs.Masker) before it is written, and again as it is read, for letters an older
version wrote.

Besides the time order, two indexes are kept with the letters, written and removed in the same
transaction: by webhook id (so the console finds every letter of a delivery, however many newer
ones there are) and by company. The replay's script: lua/dead_letter_replay.lua.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any

import orjson
from redis.asyncio import Redis

from service.core.logs import Masker
from service.stores import keys
from service.stores.keys import DEAD_LETTERS as LETTERS
from service.stores.keys import DEAD_LETTERS_BY_TIME as BY_TIME
from service.stores.keys import DEAD_LETTERS_BY_WEBHOOK as BY_WEBHOOK
from service.stores.keys import JOB_TTL_MS, QUEUE_NAME, serialize_job
from service.stores.scripts import Script, text

SEPARATOR = "\x00"  # between the webhook id and the letter id in BY_WEBHOOK (sorts before any text)
INDEX_BATCH = 500


def _webhook_member(letter: dict[str, Any]) -> str | None:
    message_id = (letter.get("event") or {}).get("message_id")
    return f"{message_id}{SEPARATOR}{letter['id']}" if isinstance(message_id, str) and message_id else None


def _company_of(letter: dict[str, Any]) -> str | None:
    company_id = (letter.get("event") or {}).get("company_id")
    return company_id if isinstance(company_id, str) and company_id else None


class DeadLetters:
    def __init__(self, redis: Redis, secrets: Iterable[str] = ()) -> None:
        """`secrets`: Settings.credentials(), masked out of every letter written and read."""
        self._redis = redis
        self._replay = Script(redis, "dead_letter_replay")
        self._mask = Masker(secrets)

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
        letter: dict[str, Any] = {
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
        letter = self._mask.value(letter)  # before anything is written: no credential in Redis
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(LETTERS, letter_id, orjson.dumps(letter))
            pipe.zadd(BY_TIME, {letter_id: now})
            self._index(pipe, letter)
            await pipe.execute()
        return letter_id

    @staticmethod
    def _index(pipe: Any, letter: dict[str, Any]) -> None:
        if member := _webhook_member(letter):
            pipe.zadd(BY_WEBHOOK, {member: 0})
        if company_id := _company_of(letter):
            pipe.zadd(keys.dead_letters_of_company(company_id), {letter["id"]: letter.get("failedAt") or 0})

    def _read(self, raw: bytes) -> dict[str, Any]:
        letter: dict[str, Any] = self._mask.value(orjson.loads(raw))
        return letter

    async def _many(self, ids: list[Any]) -> list[dict[str, Any]]:
        if not ids:
            return []
        raw = await self._redis.hmget(LETTERS, ids)
        return [self._read(value) for value in raw if value is not None]

    async def list(self, limit: int = 100) -> list[dict[str, Any]]:
        """Newest first."""
        return await self._many(await self._redis.zrevrange(BY_TIME, 0, limit - 1))

    async def get(self, letter_id: str) -> dict[str, Any] | None:
        raw = await self._redis.hget(LETTERS, letter_id)
        return self._read(raw) if raw is not None else None

    async def count(self) -> int:
        return int(await self._redis.hlen(LETTERS))

    # --- the indexes ---------------------------------------------------------------------------

    async def for_webhook(self, webhook_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """Every letter of one delivery (its jobs, and its handler calls), newest first, however
        old: read through the index, not the newest N."""
        await self.index_existing()
        low, high = f"[{webhook_id}{SEPARATOR}", f"({webhook_id}\x01"
        members = await self._redis.zrangebylex(BY_WEBHOOK, low, high, 0, limit)
        letters = await self._many([text(m).rpartition(SEPARATOR)[2] for m in members])
        return sorted(letters, key=lambda letter: letter.get("failedAt") or 0, reverse=True)

    async def webhook_ids(self, prefix: str, limit: int = 10) -> list[str]:
        """Distinct webhook ids of letters that start with `prefix` (lexical range: no scan)."""
        await self.index_existing()
        found: list[str] = []
        start = prefix.encode()  # bytes: 0xff is past any UTF-8 byte, the str "\xff" is not
        members = await self._redis.zrangebylex(BY_WEBHOOK, b"[" + start, b"(" + start + b"\xff", 0, 10 * limit)
        for member in members:
            webhook_id = text(member).partition(SEPARATOR)[0]
            if webhook_id not in found:
                found.append(webhook_id)
        return found[:limit]

    async def for_company(self, company_id: str, limit: int = 100) -> tuple[list[dict[str, Any]], int]:
        """The company's newest `limit` letters, and how many it has in all."""
        await self.index_existing()
        name = keys.dead_letters_of_company(company_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrevrange(name, 0, limit - 1)
            pipe.zcard(name)
            ids, total = await pipe.execute()
        return await self._many(ids), int(total)

    async def index_existing(self) -> None:
        """Index the letters written before the indexes existed, once per Redis: a letter written
        since is indexed as it is written. Asked of Redis every time (one EXISTS, console lookups
        only), not remembered here: a Redis restored from an older backup needs it again."""
        if await self._redis.exists(keys.DEAD_LETTERS_INDEXED):
            return
        batch: list[dict[str, Any]] = []
        async for _, raw in self._redis.hscan_iter(LETTERS, count=INDEX_BATCH):
            batch.append(orjson.loads(raw))
            if len(batch) >= INDEX_BATCH:
                await self._index_batch(batch)
                batch = []
        await self._index_batch(batch)
        await self._redis.set(keys.DEAD_LETTERS_INDEXED, "1")

    async def _index_batch(self, letters: list[dict[str, Any]]) -> None:
        if not letters:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for letter in letters:
                self._index(pipe, letter)
            await pipe.execute()

    # --- replay --------------------------------------------------------------------------------

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
        company_id = _company_of(letter)
        company_index = keys.dead_letters_of_company(company_id) if company_id else BY_TIME
        done = await self._replay(
            letters=LETTERS,
            by_time=BY_TIME,
            queue=QUEUE_NAME,
            job_key=keys.job_key(job_id),
            by_webhook=BY_WEBHOOK,
            company_index=company_index,
            letter_id=letter_id,
            job=job,
            job_ttl_ms=JOB_TTL_MS,
            job_id=job_id,
            score=now,
            webhook_member=_webhook_member(letter) or "",
        )
        return job_id if done else None
