"""Sync outcomes: the latest status per company and data type, one Redis hash per company.
Written by the workers, read by /ops and the demo."""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis

from service.stores.keys import company_syncs as key
from service.stores.outbox import Outbox
from service.stores.scripts import Script, text


class SyncStore:
    def __init__(self, redis: Redis, outbox: Outbox | None = None) -> None:
        self._redis = redis
        self._outbox = outbox or Outbox()
        self._record = Script(redis, "sync_record")  # lua/sync_record.lua

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
        # `at` and the Codat event's id first: lua/sync_record.lua reads them there, undecoded.
        first = {"at": at_ms, "codatEventId": entry["codatEventId"]} if "codatEventId" in entry else {"at": at_ms}
        record = orjson.dumps({**first, **entry, "at": at_ms})
        kind, fields = lifecycle or ("", {})
        return bool(
            await self._record(
                syncs=key(company_id),
                lifecycle=self._outbox.stream,
                data_type=data_type,
                at=at_ms,
                record=record,
                codat_event_id=entry["codatEventId"] if isinstance(entry.get("codatEventId"), str) else "",
                kind=kind,
                company=fields.get("companyId") or "",
                event=self._outbox.encoded(kind, fields) if kind else "",
                outbox_maxlen=self._outbox.maxlen,
            )
        )

    async def get(self, company_id: str) -> dict[str, Any]:
        raw = await self._redis.hgetall(key(company_id))
        return {text(k): orjson.loads(v) for k, v in raw.items()}
