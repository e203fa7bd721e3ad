"""Reading the lifecycle events' stream (written by the outbox, service.stores.outbox): the
newest for /ops/events and the console, and a follow for `codat-webhooks events tail`."""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis

from service.stores.keys import LIFECYCLE_STREAM
from service.stores.scripts import text


class LifecycleStream:
    def __init__(self, redis: Redis, name: str = LIFECYCLE_STREAM) -> None:
        self._redis = redis
        self.name = name

    async def recent(
        self, count: int = 100, *, kind: str | None = None, company_id: str | None = None, scan: int = 5000
    ) -> list[dict[str, Any]]:
        """Newest first, at most `count`, of the last `scan` entries, filtered by type/company."""
        found: list[dict[str, Any]] = []
        if count <= 0:
            return found
        for stream_id, fields in await self._redis.xrevrange(self.name, count=scan):
            event = decode(stream_id, fields)
            if (kind is None or event["type"] == kind) and (company_id is None or event.get("companyId") == company_id):
                found.append(event)
                if len(found) >= count:
                    break
        return found

    async def follow(self, after: str = "$", block_ms: int = 1000) -> tuple[str, list[dict[str, Any]]]:
        """Entries after stream id `after` (waiting up to `block_ms`, which must stay under the
        client's socket timeout); the id to follow from next."""
        answer = await self._redis.xread({self.name: after}, block=block_ms, count=500)
        events = [decode(stream_id, fields) for _, entries in answer or [] for stream_id, fields in entries]
        return (events[-1]["streamId"] if events else after), events


def decode(stream_id: Any, fields: dict[Any, Any]) -> dict[str, Any]:
    event: dict[str, Any] = orjson.loads(fields.get(b"event") or fields.get("event") or b"{}")
    event["streamId"] = text(stream_id)
    return event
