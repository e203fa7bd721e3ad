"""The reconcile's bookkeeping: one run at a time (a leased lock), its cursor (the next page of
companies) and what each page found, and the summary of the last complete run. A page's counts
are kept under its page number, so a page done twice (a rerun after a crash) counts once."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
from redis.asyncio import Redis

from service.core.clock import now_ms
from service.stores.keys import DEPLOYED_AT, RECONCILE_LAST, RECONCILE_LOCK, RECONCILE_RUN
from service.stores.replication import PRIMARY_ONLY, Replication, execute
from service.stores.scripts import Script, decoded, text


class ReconcileStore:
    def __init__(self, redis: Redis, replication: Replication = PRIMARY_ONLY) -> None:
        self._redis = redis
        self._replication = replication
        # lua/reconcile_*.lua
        self._start = Script(redis, "reconcile_start")
        self._advance = Script(redis, "reconcile_advance")
        self._finish = Script(redis, "reconcile_finish")

    async def mark_deployed(self) -> int:
        """The deployment watermark: set by the first worker ever to start, then kept."""
        await self._redis.set(DEPLOYED_AT, now_ms(), nx=True)
        return int(await self._redis.get(DEPLOYED_AT) or now_ms())

    async def deployed_at(self) -> int | None:
        value = await self._redis.get(DEPLOYED_AT)
        return int(value) if value is not None else None

    async def start(
        self, run_id: str, lease_ms: int, *, dry_run: bool = False, company: str = ""
    ) -> tuple[str, int] | None:
        """(run id, page to do) of the run this caller now holds, or None if one is running. The
        lock is on REDIS_MIN_REPLICAS replicas before this returns (the run calls Codat next):
        else NotReplicated, a RedisError, and the tick or page retries."""
        pipe = self._redis.pipeline(transaction=False)
        self._start.stage(
            pipe,
            lock=RECONCILE_LOCK,
            run=RECONCILE_RUN,
            run_id=run_id,
            lease_ms=lease_ms,
            now=now_ms(),
            dry_run=int(dry_run),
            company=company,
        )
        (held,) = decoded(await execute(self._redis, pipe, self._replication))
        if not held:
            return None
        return held[0], int(held[1])

    async def advance(self, run_id: str, lease_ms: int, page: int, found: Counter[str], next_page: int) -> bool:
        """Record a page's findings and move the cursor; False if the run lost its lock."""
        done = await self._advance(
            lock=RECONCILE_LOCK,
            run=RECONCILE_RUN,
            run_id=run_id,
            lease_ms=lease_ms,
            page=page,
            found=orjson.dumps(found),
            next_page=next_page,
        )
        return bool(done)

    async def current(self) -> dict[str, Any] | None:
        raw = await self._redis.hgetall(RECONCILE_RUN)
        if not raw:
            return None
        fields = {text(k): text(v) for k, v in raw.items()}
        found: Counter[str] = Counter()
        for name, value in fields.items():
            if name.startswith("found:"):
                found.update(orjson.loads(value))
        return {
            "id": fields.get("id"),
            "page": int(fields.get("page", "1")),
            "startedAt": int(fields.get("startedAt", "0")),
            "dryRun": fields.get("dryRun") == "1",
            "company": fields.get("company") or None,
            "found": dict(found),
            "pagesDone": sum(1 for name in fields if name.startswith("found:")),
        }

    async def finish(self, run_id: str, summary: dict[str, Any]) -> bool:
        done = await self._finish(
            lock=RECONCILE_LOCK, run=RECONCILE_RUN, last=RECONCILE_LAST, run_id=run_id, summary=orjson.dumps(summary)
        )
        return bool(done)

    async def release(self, run_id: str) -> None:
        """Give the lock up (a run that failed for good); its cursor stays for the next start."""
        if text(await self._redis.get(RECONCILE_LOCK) or b"") == run_id:
            await self._redis.delete(RECONCILE_LOCK)

    async def last(self) -> dict[str, Any] | None:
        raw = await self._redis.get(RECONCILE_LAST)
        return orjson.loads(raw) if raw else None
