"""What the ops console reads back, kept off the ingress path (the workers write all of it):

- per connection, its last HISTORY_LENGTH state changes, stale and Codat-decided ones included,
  written by the connection compare-and-set itself (service.stores.connections), kept
  HISTORY_TTL after the last one;
- per delivery, a trace of what its job did (one JSON string), written with the job's end
  (workers.worker), kept TRACE_TTL from its last try;
- per company, its connections and its name, as events and the reconcile give them.
"""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from service.core.clock import iso
from service.stores import keys
from service.stores.scripts import Script, text


def trace_value(trace: dict[str, Any], tries: int) -> bytes:
    """A trace as it is kept (lua/job_traces.lua): one JSON string, None left out. `tries`: the
    tries of the job that wrote it (arq's count: every retry, deferral and crash), so a replay's
    trace counts the replay's own."""
    return orjson.dumps({**{k: v for k, v in trace.items() if v is not None}, "tries": tries})


class HistoryStore:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._trace = Script(redis, "history_trace")  # lua/history_trace.lua

    async def connection_history(self, connection_id: str) -> list[dict[str, Any]]:
        """Newest first: {at, eventAt (ISO), from, to, outcome (applied | stale), authoritative
        (Codat was asked), eventType, webhookId, emitted (lifecycle event types)}."""
        raw = await self._redis.lrange(keys.connection_history(connection_id), 0, -1)
        entries = []
        for value in raw:
            entry = orjson.loads(value)
            entry["at"], entry["eventAt"] = iso(entry.get("at")), iso(entry.get("eventAt"))
            entry["emitted"] = entry.get("emitted") or []  # Lua's cjson writes an empty list as {}
            entries.append(entry)
        return entries

    async def record_delivery(self, message_id: str, trace: dict[str, Any], *, tries: int = 1) -> None:
        """The trace of one job try, on its own: the workers write it with the job's end instead
        (service.stores.jobqueue.finish_batch, the same lua/job_traces.lua)."""
        key = keys.delivery_trace(message_id)
        await self._trace(key=key, ttl=keys.TRACE_TTL_SECONDS, value=trace_value(trace, tries))

    async def delivery(self, message_id: str) -> dict[str, Any] | None:
        """{webhookId, receivedAt, jobId, eventType, route, outcome, companyId, connectionId,
        processedAt, tries}; None if no job has ended for it (yet)."""
        key = keys.delivery_trace(message_id)
        try:
            raw = await self._redis.get(key)
            stored = orjson.loads(raw) if raw is not None else None
        except ResponseError:  # WRONGTYPE: a trace kept as a hash, before 2026-12 (gone in TRACE_TTL)
            stored = {text(k): text(v) for k, v in (await self._redis.hgetall(key)).items()} or None
        if not stored:
            return None
        trace: dict[str, Any] = {"webhookId": message_id}
        for name, value in stored.items():
            trace[name] = int(value) if name in ("tries", "receivedAtMs", "processedAtMs") else value
        trace["receivedAt"], trace["processedAt"] = iso(trace.get("receivedAtMs")), iso(trace.get("processedAtMs"))
        seen = await self._redis.exists(keys.seen(message_id))
        trace["deduplicating"] = bool(seen)  # a copy arriving now would be answered 200
        return trace

    async def delivery_known(self, message_id: str) -> bool:
        """A trace of its job, or its dedup record: the service has heard of this delivery."""
        return bool(await self._redis.exists(keys.delivery_trace(message_id), keys.seen(message_id)))

    async def traced_deliveries(
        self, prefix: str, limit: int, *, scan_count: int, scan_calls: int, found: tuple[str, ...] = ()
    ) -> tuple[list[str], bool]:
        """`found` (ids known otherwise), then the webhook ids of delivery traces that start with
        `prefix`, until there are `limit`: a SCAN of the trace keys bounded to `scan_calls` calls of
        `scan_count`; also whether it stopped before the end (on a Redis with millions of keys, it
        may not look everywhere)."""
        name = keys.delivery_trace("")
        pattern = name + "".join(f"\\{c}" if c in "*?[]\\" else c for c in prefix) + "*"  # glob taken literally
        ids = list(found)
        cursor, calls = 0, 0
        while len(ids) < limit and calls < scan_calls:
            cursor, names = await self._redis.scan(cursor, match=pattern, count=scan_count)
            calls += 1
            for key in names:
                webhook_id = text(key).removeprefix(name)
                if webhook_id not in ids:
                    ids.append(webhook_id)
            if cursor == 0:
                break
        return ids, cursor != 0

    async def connections_of(self, company_id: str) -> list[str]:
        return sorted(text(c) for c in await self._redis.smembers(keys.company_connections(company_id)))

    async def company_name(self, company_id: str) -> str | None:
        name = await self._redis.hget(keys.COMPANY_NAMES, company_id)
        return text(name) if name is not None else None

    async def search_companies(self, query: str, limit: int = 50) -> list[dict[str, str | None]]:
        """Companies whose id starts with, or whose name contains, `query` (case-insensitive).
        A scan of the names: fine for the thousands of companies a console is used on."""
        wanted = query.strip().lower()
        found: list[dict[str, str | None]] = []
        async for company, name in self._redis.hscan_iter(keys.COMPANY_NAMES, count=500):
            company_id, company_name = text(company), text(name)
            if not wanted or company_id.lower().startswith(wanted) or wanted in company_name.lower():
                found.append({"companyId": company_id, "name": company_name})
                if len(found) >= limit:
                    break
        if not found and wanted and await self._redis.exists(keys.company_connections(query.strip())):
            found.append({"companyId": query.strip(), "name": None})  # known by id, never by name
        return found
