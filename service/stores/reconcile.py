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

# KEYS: lock, run. ARGV: run id, lease (ms), now (ms), dry run ("1"), company ("" for all).
# A run left by a crash (its lock expired) is resumed from its cursor, not started again.
# Returns {run id, page} of the run now holding the lock, or false when another one does.
_START = """
local holder = redis.call('GET', KEYS[1])
if holder then return false end
local run = redis.call('HGET', KEYS[2], 'id')
if not run then
  run = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], 'id', run, 'page', 1, 'startedAt', ARGV[3], 'dryRun', ARGV[4],
             'company', ARGV[5])
end
redis.call('SET', KEYS[1], run, 'PX', ARGV[2])
return {run, redis.call('HGET', KEYS[2], 'page')}
"""

# KEYS: lock, run. ARGV: run id, lease (ms), page done, its counts (JSON), next page (0: last).
_ADVANCE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], 'found:' .. ARGV[3], ARGV[4])
if ARGV[5] ~= '0' then redis.call('HSET', KEYS[2], 'page', ARGV[5]) end
return 1
"""

# KEYS: lock, run, last. ARGV: run id, summary (JSON).
_FINISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[3], ARGV[2])
redis.call('DEL', KEYS[1], KEYS[2])
return 1
"""


class ReconcileStore:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._start = redis.register_script(_START)
        self._advance = redis.register_script(_ADVANCE)
        self._finish = redis.register_script(_FINISH)

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
        """(run id, page to do) of the run this caller now holds, or None if one is running."""
        held = await self._start(
            keys=[RECONCILE_LOCK, RECONCILE_RUN], args=[run_id, lease_ms, now_ms(), int(dry_run), company]
        )
        if not held:
            return None
        return _text(held[0]), int(held[1])

    async def advance(self, run_id: str, lease_ms: int, page: int, found: Counter[str], next_page: int) -> bool:
        """Record a page's findings and move the cursor; False if the run lost its lock."""
        done = await self._advance(
            keys=[RECONCILE_LOCK, RECONCILE_RUN], args=[run_id, lease_ms, page, orjson.dumps(found), next_page]
        )
        return bool(done)

    async def current(self) -> dict[str, Any] | None:
        raw = await self._redis.hgetall(RECONCILE_RUN)
        if not raw:
            return None
        fields = {_text(k): _text(v) for k, v in raw.items()}
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
            keys=[RECONCILE_LOCK, RECONCILE_RUN, RECONCILE_LAST], args=[run_id, orjson.dumps(summary)]
        )
        return bool(done)

    async def release(self, run_id: str) -> None:
        """Give the lock up (a run that failed for good); its cursor stays for the next start."""
        if _text(await self._redis.get(RECONCILE_LOCK) or b"") == run_id:
            await self._redis.delete(RECONCILE_LOCK)

    async def last(self) -> dict[str, Any] | None:
        raw = await self._redis.get(RECONCILE_LAST)
        return orjson.loads(raw) if raw else None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
