"""The intervals in which this service could not take Codat's deliveries, written down with what
to do about each (issue 23; docs/operator/delivery-health.md).

Three kinds, each recorded by the part that can tell:

- `unavailable`: the web answered 503 (Redis away, or not confirmed by enough replicas). Redis
  cannot be written while it is away, so the web process keeps the start in memory and writes the
  interval at its first 2xx after it (service.stores.delivery_health.DeliveryMarks).
- `web_down`: no web process was running. A web that starts and finds the last sign of life of
  any web (keys.WEB_ALIVE_AT, refreshed every few seconds) too old records the interval from the
  later of that and the last delivery taken, to its own start.
- `consumer_disabled`: Codat disabled this service's consumer (after 5 days of failures, or by
  hand). Opened by the workers' consumer watch when it sees `disabled: true`, from the last
  delivery taken; closed when it sees the consumer enabled again.

Codat retries a failed message for ~28 h (8 attempts), so an `unavailable` or `web_down` interval
shorter than that, and over, is covered by its own retries: nothing to do. Anything longer, and
any disabled consumer (Codat does not retry into a disabled endpoint), needs Codat's Portal:
"Recover failed messages" (or, for a disabled endpoint, "Replay missing messages") from the gap's
start, at most 14 days back, and then a reconcile. Replays of what was taken are answered 200:
the dedup records are kept 15 days (Settings.dedup_ttl_seconds).

At most MAX_GAPS are kept, the oldest dropped first.
"""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis

from service.core.clock import iso, now_ms
from service.stores.keys import GAPS, GAPS_BY_START

CODAT_RETRY_WINDOW_MS = 28 * 3600 * 1000  # Codat's retry schedule, end to end
PORTAL_REPLAY_MS = 14 * 24 * 3600 * 1000  # how far back the Portal recovers or replays
MAX_GAPS = 500
KINDS = ("unavailable", "web_down", "consumer_disabled")
WHAT = {
    "unavailable": "the web answered 503: Redis could not be written (or not confirmed by its replicas)",
    "web_down": "no web process was running",
    "consumer_disabled": "Codat had this service's webhook consumer disabled",
}


class GapStore:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def record(
        self, kind: str, start_ms: int, end_ms: int | None, *, gap_id: str | None = None, **detail: Any
    ) -> dict[str, Any]:
        """Write an interval (end None: still open). The same id written twice keeps the last."""
        gap = {"id": gap_id or f"{kind}:{start_ms}", "kind": kind, "start": start_ms, "end": end_ms, **detail}
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(GAPS, gap["id"], orjson.dumps(gap))
            pipe.zadd(GAPS_BY_START, {gap["id"]: start_ms})
            pipe.zcard(GAPS_BY_START)
            *_, count = await pipe.execute()
        if count > MAX_GAPS:
            oldest = await self._redis.zrange(GAPS_BY_START, 0, count - MAX_GAPS - 1)
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(GAPS_BY_START, *oldest)
                pipe.hdel(GAPS, *oldest)
                await pipe.execute()
        return gap

    async def open(self, gap_id: str, kind: str, start_ms: int, **detail: Any) -> bool:
        """Open a gap unless one with this id is there already (open or closed); True if opened."""
        gap = {"id": gap_id, "kind": kind, "start": start_ms, "end": None, **detail}
        if not await self._redis.hsetnx(GAPS, gap_id, orjson.dumps(gap)):
            return False
        await self._redis.zadd(GAPS_BY_START, {gap_id: start_ms})
        return True

    async def close(self, gap_id: str, end_ms: int) -> dict[str, Any] | None:
        """End an open gap; the closed gap, or None if there was no open one by this id."""
        raw = await self._redis.hget(GAPS, gap_id)
        if raw is None:
            return None
        gap: dict[str, Any] = orjson.loads(raw)
        if gap.get("end") is not None:
            return None
        gap["end"] = max(end_ms, gap["start"])
        # Closed, its id is free again: a consumer disabled a second time is a new gap.
        closed_id = f"{gap_id}:{gap['start']}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(GAPS, gap_id)
            pipe.zrem(GAPS_BY_START, gap_id)
            pipe.hset(GAPS, closed_id, orjson.dumps({**gap, "id": closed_id}))
            pipe.zadd(GAPS_BY_START, {closed_id: gap["start"]})
            await pipe.execute()
        return {**gap, "id": closed_id}

    async def list(self, limit: int = 50, *, now: int | None = None) -> list[dict[str, Any]]:
        """Newest first, each with what it means and what to do (`explain`)."""
        ids = await self._redis.zrevrange(GAPS_BY_START, 0, limit - 1)
        if not ids:
            return []
        now = now_ms() if now is None else now
        found = await self._redis.hmget(GAPS, ids)
        return [explain(orjson.loads(raw), now) for raw in found if raw is not None]


def explain(gap: dict[str, Any], now: int) -> dict[str, Any]:
    """The gap with its times in ISO, its length, whether Codat's retries cover it, and what to do."""
    start, end = int(gap["start"]), gap.get("end")
    length_ms = (int(end) if end is not None else now) - start
    # A closed gap shorter than Codat's retry schedule: every message that failed in it was tried
    # again after it. A disabled consumer is never retried into, however short.
    covered = gap["kind"] != "consumer_disabled" and end is not None and length_ms < CODAT_RETRY_WINDOW_MS
    retrying = gap["kind"] != "consumer_disabled" and end is None and length_ms < CODAT_RETRY_WINDOW_MS
    portal_from = max(start, now - PORTAL_REPLAY_MS)
    if covered:
        todo = (
            "nothing: shorter than Codat's ~28 h of retries, which resent what failed in it "
            "(`codat-webhooks reconcile` confirms the state)"
        )
    else:
        action = (
            "re-enable the consumer, then 'Replay missing messages'"
            if gap["kind"] == "consumer_disabled"
            else "'Recover failed messages'"
        )
        todo = (
            f"in Codat's Portal (Settings > Webhooks > Events > this endpoint): {action} from {iso(portal_from)}"
            + (" (the Portal goes back 14 days: what is older is gone for good)" if portal_from > start else "")
            + "; then run `codat-webhooks reconcile`. What was taken already is answered 200, not processed twice."
        )
        if retrying:
            todo = "wait: Codat is still retrying what failed since the start (for ~28 h); if it lasts, " + todo
    return {
        **gap,
        "startAt": iso(start),
        "endAt": iso(int(end)) if end is not None else None,
        "lastAcceptedAt": iso(gap["lastAccepted"]) if gap.get("lastAccepted") else None,
        "open": end is None,
        "seconds": max(0, length_ms) // 1000,
        "coveredByRetries": covered,
        "what": WHAT.get(gap["kind"], gap["kind"]),
        "todo": todo,
    }
