"""Sync outcomes: the latest status per company and data type, one Redis hash per company.
Written by the workers, read by /ops and the demo."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from service.stores.keys import company_syncs as key
from service.stores.outbox import Outbox
from service.stores.scripts import Script, text

# keep_sync's arguments (lua/sync_keep.lua), which `Keep.args` holds in its order.
SYNC_KEEP_ARGS = 10


@dataclass(frozen=True, slots=True)
class Keep:
    """One sync outcome to keep, as lua/sync_keep.lua takes it (`args`, in its order): written by
    `SyncStore.write` in a call of its own, or by the worker with the job's end
    (service.stores.jobqueue.Finish)."""

    args: tuple[str | bytes | int, ...]


class SyncStore:
    def __init__(self, redis: Redis, outbox: Outbox | None = None) -> None:
        self._redis = redis
        self._outbox = outbox or Outbox()
        self._record = Script(redis, "sync_record")  # lua/sync_record.lua

    def keep(
        self,
        company_id: str,
        data_type: str,
        at_ms: int,
        entry: dict[str, Any],
        lifecycle: tuple[str, dict[str, Any]] | None = None,
    ) -> Keep:
        """`entry` as the data type's latest outcome, kept unless a newer one (or this one) is;
        `lifecycle`: the (type, fields) of the event that keeping it emits."""
        # `at` and the Codat event's id first: lua/sync_keep.lua reads them there, undecoded.
        first = {"at": at_ms, "codatEventId": entry["codatEventId"]} if "codatEventId" in entry else {"at": at_ms}
        kind, fields = lifecycle or ("", {})
        return Keep(
            (
                key(company_id),
                data_type,
                at_ms,
                orjson.dumps({**first, **entry, "at": at_ms}),
                entry["codatEventId"] if isinstance(entry.get("codatEventId"), str) else "",
                self._outbox.stream,
                self._outbox.maxlen,
                kind,
                fields.get("companyId") or "",
                self._outbox.encoded(kind, fields) if kind else "",
            )
        )

    async def write(self, keep: Keep) -> bool:
        """A `keep` written in a call of its own. True if kept."""
        syncs, data_type, at, record, codat_id, stream, maxlen, kind, company, event = keep.args
        return bool(
            await self._record(
                syncs=syncs,
                lifecycle=stream,
                data_type=data_type,
                at=at,
                record=record,
                codat_event_id=codat_id,
                kind=kind,
                company=company,
                event=event,
                outbox_maxlen=maxlen,
            )
        )

    async def get(self, company_id: str) -> dict[str, Any]:
        raw = await self._redis.hgetall(key(company_id))
        return {text(k): orjson.loads(v) for k, v in raw.items()}
