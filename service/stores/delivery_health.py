"""Is Codat delivering? What Redis holds to answer it (issue 23; docs/operator/delivery-health.md):

- **the last delivery taken, per family** (connection, sync, other): the time of the last 2xx
  (new or duplicate: either way Codat reached us). The web process keeps it in memory and writes
  it at most once a second (`DeliveryMarks`), the larger value winning, so the hot path costs no
  round trip; read at every scrape as `codat_webhook_last_accepted_timestamp_seconds{family}`.
- **the last sign of life of any web process** (refreshed every ALIVE_EVERY_MS), which tells a
  web that starts how long nobody was there to answer (a `web_down` gap, service.stores.gaps).
- **the 503 intervals** of this web process, kept in memory while Redis is away and written as an
  `unavailable` gap at the first 2xx after.
- **the Linked connections**, counted by the workers' delivery watch (workers.delivery_watch):
  silence only means something while some connection is Linked.
- **the consumer watch's last report**: what Codat's GET /webhooks says of this service's consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.core.catalogue import CONNECTION_EVENTS, SYNC_EVENTS
from service.core.clock import iso, now_ms
from service.stores import keys
from service.stores.gaps import GapStore, explain
from service.stores.scripts import Script, text

log = structlog.get_logger(__name__)

FAMILIES = ("connection", "sync", "other")
FLUSH_SECONDS = 1.0
ALIVE_EVERY_MS = 2_000
# No sign of life from any web process for this long: the next one to start records a gap. Five
# missed refreshes: a web that restarts within it lost nothing Codat's first retry (5 s) misses.
DOWN_AFTER_MS = 10_000


def family_of(event_type: str) -> str:
    if event_type in CONNECTION_EVENTS:
        return "connection"
    if event_type in SYNC_EVENTS:
        return "sync"
    return "other"


class DeliveryMarks:
    """The web process's side: `accepted` and `unavailable` are called per delivery and touch
    memory only; a task of its own writes them to Redis, refreshes the sign of life, and at its
    first run records the time no web was running."""

    def __init__(self, redis: Redis, gaps: GapStore, source: str) -> None:
        self._redis = redis
        self._gaps = gaps
        self._source = source
        self._last: dict[str, int] = {}  # family -> ms, not yet written
        self._last_taken = 0  # the last 2xx this process gave (ms), for the gaps' lastAccepted
        self._failing_since: int | None = None  # the first 503 since the last 2xx
        self._failing_after = 0  # the last 2xx before it
        self._ended: list[dict[str, Any]] = []  # 503 intervals over, not yet written
        self._checked_start = False
        self._alive_written = 0
        self._task: asyncio.Task[None] | None = None
        self._max = Script(redis, "delivery_marks_max")  # lua/delivery_marks_max.lua

    # --- per delivery: memory only ---------------------------------------------------------------

    def accepted(self, event_type: str, at_ms: int) -> None:
        family = family_of(event_type)
        if at_ms > self._last.get(family, 0):
            self._last[family] = at_ms
        if self._failing_since is not None:
            self._ended.append(
                {"start": self._failing_since, "end": at_ms, "lastAccepted": self._failing_after or None}
            )
            self._failing_since = None
        self._last_taken = max(self._last_taken, at_ms)

    def unavailable(self, at_ms: int) -> None:
        if self._failing_since is None:
            self._failing_since, self._failing_after = at_ms, self._last_taken

    # --- the task ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(RedisError, OSError):
            await self.flush()  # what the last second took

    async def _run(self) -> None:
        while True:
            try:
                await self.flush()
            except (RedisError, OSError):
                pass  # Redis away: kept in memory, written once it answers
            except Exception as exc:  # never let a bug here end the marks for the process's life
                log.error("delivery.marks_failed", error=repr(exc))
            await asyncio.sleep(FLUSH_SECONDS)

    async def flush(self) -> None:
        now = now_ms()
        if not self._checked_start:
            await self._record_downtime(now)
            self._checked_start = True
        if self._last:
            marks, self._last = self._last, {}
            try:
                await self._max(marks=keys.LAST_ACCEPTED, given=[v for item in marks.items() for v in item])
            except BaseException:
                for family, at in marks.items():  # back for the next try, unless newer ones came
                    self._last[family] = max(at, self._last.get(family, 0))
                raise
        while self._ended:
            interval = self._ended[0]
            gap = await self._gaps.record(
                "unavailable", interval["start"], interval["end"], source=self._source, **_known(interval)
            )
            self._ended.pop(0)
            _log_gap(gap)
        if now - self._alive_written >= ALIVE_EVERY_MS:
            await self._redis.set(keys.WEB_ALIVE_AT, now)
            self._alive_written = now

    async def _record_downtime(self, now: int) -> None:
        """At this process's first write: was any web up just now? If not, from when was none?"""
        alive, last = await asyncio.gather(self._redis.get(keys.WEB_ALIVE_AT), last_accepted(self._redis))
        if alive is None:
            return  # the first web this deployment ever ran: nothing before it to miss
        since = max(int(alive), max(last.values(), default=0))
        if now - int(alive) < DOWN_AFTER_MS:
            return
        latest = max(last.values(), default=0) or None
        gap = await self._gaps.record("web_down", since, now, source=self._source, lastAccepted=latest)
        _log_gap(gap)


def _known(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k not in ("start", "end") and v is not None}


def _log_gap(gap: dict[str, Any]) -> None:
    shown = explain(gap, now_ms())
    log.warning(
        "delivery.gap_recorded",
        kind=gap["kind"],
        start=shown["startAt"],
        end=shown["endAt"],
        seconds=shown["seconds"],
        covered_by_retries=shown["coveredByRetries"],
        todo=shown["todo"],
    )


async def last_accepted(redis: Redis) -> dict[str, int]:
    raw = await redis.hgetall(keys.LAST_ACCEPTED)
    return {text(k): int(v) for k, v in raw.items() if text(k) in FAMILIES}


async def count_linked(redis: Redis, *, batch: int = 1000) -> int:
    """The connections whose reconciled status is Linked: a scan of the connection hashes, one
    pipeline of HGETs per batch (the delivery watch runs it once per interval, not per scrape)."""
    linked = 0
    cursor: Any = 0
    pattern = keys.connection("*")
    while True:
        cursor, names = await redis.scan(cursor, match=pattern, count=batch)
        if names:
            async with redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.hget(name, "status")
                statuses = await pipe.execute()
            linked += sum(1 for status in statuses if status in (b"Linked", "Linked"))
        if not int(cursor):
            return linked


async def save_linked(redis: Redis, count: int) -> None:
    await redis.set(keys.LINKED_CONNECTIONS, orjson.dumps({"count": count, "at": now_ms()}))


async def save_consumer_report(redis: Redis, report: dict[str, Any]) -> None:
    await redis.set(keys.CONSUMER_REPORT, orjson.dumps(report))


async def consumer_report(redis: Redis) -> dict[str, Any] | None:
    raw = await redis.get(keys.CONSUMER_REPORT)
    return orjson.loads(raw) if raw else None


async def snapshot(redis: Redis, silence_ms: int, *, now: int | None = None) -> dict[str, Any]:
    """What the console, `codat-webhooks status` and the scrape show: {lastAccepted {family: ms},
    lastAcceptedAt {family: ISO}, newest (ms), silentSeconds, linked {count, at} or None, silent
    (nothing for `silence_ms` while Linked connections exist), consumer (the watch's report)}."""
    now = now_ms() if now is None else now
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.LAST_ACCEPTED)
        pipe.get(keys.LINKED_CONNECTIONS)
        pipe.get(keys.CONSUMER_REPORT)
        raw_last, raw_linked, raw_report = await pipe.execute()
    last = {text(k): int(v) for k, v in raw_last.items() if text(k) in FAMILIES}
    linked = orjson.loads(raw_linked) if raw_linked else None
    newest = max(last.values(), default=None)
    silent_for = (now - newest) if newest else None
    linked_now = bool(linked and linked["count"])
    return {
        "lastAccepted": last,
        "lastAcceptedAt": {family: iso(last.get(family)) for family in FAMILIES},
        "newest": newest,
        "silentSeconds": silent_for // 1000 if silent_for is not None else None,
        "thresholdSeconds": silence_ms // 1000,
        "linked": linked,
        # As the alert has it (CodatDeliveriesSilent): a last delivery too long ago, while Linked
        # connections exist. Never any delivery is `neverDelivered`: the consumer watch says why.
        "silent": linked_now and silent_for is not None and silent_for > silence_ms,
        "neverDelivered": newest is None,
        "consumer": orjson.loads(raw_report) if raw_report else None,
    }
