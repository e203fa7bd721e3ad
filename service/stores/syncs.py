"""Sync outcomes: the latest status per company and data type, one Redis hash per company.
Written by the workers, read by /ops and the demo."""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis

from service.stores.keys import company_syncs as key

# KEYS: the company's hash. ARGV: data type, at (ms), record. Older news never overwrites newer.
_RECORD = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current and tonumber(cjson.decode(current)['at']) > tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""


class SyncStore:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._record = redis.register_script(_RECORD)

    async def record(self, company_id: str, data_type: str, at_ms: int, entry: dict[str, Any]) -> bool:
        """Keep `entry` as the data type's latest outcome unless a newer one is kept. True if kept."""
        record = orjson.dumps({**entry, "at": at_ms})
        return bool(await self._record(keys=[key(company_id)], args=[data_type, at_ms, record]))

    async def get(self, company_id: str) -> dict[str, Any]:
        raw = await self._redis.hgetall(key(company_id))
        return {(k.decode() if isinstance(k, bytes) else k): orjson.loads(v) for k, v in raw.items()}
