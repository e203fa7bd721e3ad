"""Sync outcomes: the latest status per company and data type, one Redis hash per company.
Written by the workers, read by /ops and the demo."""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis

from service.stores.keys import company_syncs as key
from service.stores.outbox import EMIT, Outbox

# KEYS: the company's hash, the lifecycle stream. ARGV: data type, at (ms), record (JSON, with the
# Codat event's own id as `codatEventId`), lifecycle event type ("" for none), its fields (JSON),
# then Outbox.args. Older news never overwrites newer, and the same news twice (a duplicate, a
# replay under a new webhook id) is kept and told once.
_RECORD = (
    EMIT
    + """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  local kept = cjson.decode(current)
  if tonumber(kept['at']) > tonumber(ARGV[2]) then return 0 end
  if kept['codatEventId'] and kept['codatEventId'] == cjson.decode(ARGV[3])['codatEventId'] then return 0 end
end
if ARGV[4] ~= '' then
  local fields = cjson.decode(ARGV[5])
  fields['derivedAt'] = ARGV[8]
  emit(KEYS[2], ARGV[6], ARGV[7], ARGV[4], fields)
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""
)


class SyncStore:
    def __init__(self, redis: Redis, outbox: Outbox | None = None) -> None:
        self._redis = redis
        self._outbox = outbox or Outbox()
        self._record = redis.register_script(_RECORD)

    async def record(
        self,
        company_id: str,
        data_type: str,
        at_ms: int,
        entry: dict[str, Any],
        lifecycle: tuple[str, dict[str, Any]] | None = None,
    ) -> bool:
        """Keep `entry` as the data type's latest outcome unless a newer one (or this one) is
        kept; `lifecycle`: the (type, fields) of the event that keeping it emits. True if kept."""
        record = orjson.dumps({**entry, "at": at_ms})
        kind, fields = lifecycle or ("", {})
        return bool(
            await self._record(
                keys=[key(company_id), self._outbox.stream],
                args=[data_type, at_ms, record, kind, orjson.dumps(fields), *self._outbox.args()],
            )
        )

    async def get(self, company_id: str) -> dict[str, Any]:
        raw = await self._redis.hgetall(key(company_id))
        return {(k.decode() if isinstance(k, bytes) else k): orjson.loads(v) for k, v in raw.items()}
