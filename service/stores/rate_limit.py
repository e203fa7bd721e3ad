"""The rate-limit pause: while it is set, no worker calls Codat. Jobs it deferred are
remembered, so that a reset can put them back at the head of the queue at once.

Both a reached and a reset are ordered by Codat's time (lua/rate_limit_pause.lua, rate_limit_resume.lua):
a late delivery changes nothing; at the same time, a reset wins. Whether the pause holds is one
rule (lua/rate_limit_paused.lua), read before every Codat call: by `paused_until` for a call that
names no company, with the company's slot for one that does (service.stores.slots)."""

from __future__ import annotations

import orjson
from redis.asyncio import Redis

from service.core.clock import iso, now_ms
from service.stores.keys import QUEUE_NAME, RATE_LIMIT_DEFERRED, RATE_LIMIT_LAST_EVENT_AT, RATE_LIMIT_PAUSED_UNTIL
from service.stores.outbox import Outbox
from service.stores.scripts import Script


class RateLimits:
    def __init__(self, redis: Redis, outbox: Outbox | None = None) -> None:
        self._redis = redis
        self._outbox = outbox or Outbox()
        self._pause = Script(redis, "rate_limit_pause")
        self._resume = Script(redis, "rate_limit_resume")
        self._check = Script(redis, "rate_limit_check")

    async def paused_until(self) -> int | None:
        """Epoch ms the pause lasts until, or None when calls may go out. A call that names a
        company reads it with its slot instead (service.stores.slots): the rule, in one place, is
        lua/rate_limit_paused.lua."""
        until = await self._check(pause=RATE_LIMIT_PAUSED_UNTIL, now=now_ms())
        return int(until) if until is not None else None

    async def pause(
        self,
        until_ms: int,
        occurred_at: str | None = None,
        daily_quota: object = None,
        event_at_ms: int | None = None,
        *,
        webhook_id: str | None = None,
        codat_event_type: str | None = None,
    ) -> bool:
        """Pause every Codat call until `until_ms`; True if that moved the pause (and told so).
        `webhook_id`, `codat_event_type`: the delivery behind it, named in rate_limit.paused."""
        fields = {
            "companyId": "",  # the whole Codat client, no one company
            "pausedUntil": iso(until_ms),
            "occurredAt": occurred_at or iso(now_ms()),
            "dailyQuota": daily_quota,
            "webhookId": webhook_id,
            "codatEventType": codat_event_type,
        }
        fields = {k: v for k, v in fields.items() if v is not None}
        moved = await self._pause(
            pause=RATE_LIMIT_PAUSED_UNTIL,
            lifecycle=self._outbox.stream,
            last_event=RATE_LIMIT_LAST_EVENT_AT,
            until_ms=until_ms,
            now=now_ms(),
            fields=orjson.dumps(fields),
            event_at=event_at_ms or now_ms(),
            **self._outbox.args(),
        )
        return bool(moved)

    async def remember_deferred(self, job_id: str) -> None:
        await self._redis.sadd(RATE_LIMIT_DEFERRED, job_id)

    async def resume(
        self,
        occurred_at: str | None = None,
        event_at_ms: int | None = None,
        *,
        webhook_id: str | None = None,
        codat_event_type: str | None = None,
    ) -> int:
        """Lift the pause (telling so, with the delivery behind it, if there was one) and make
        every job it deferred due now; how many were woken."""
        named = {"webhookId": webhook_id, "codatEventType": codat_event_type}
        fields = orjson.dumps(
            {"companyId": "", "occurredAt": occurred_at or iso(now_ms())}
            | {k: v for k, v in named.items() if v is not None}
        )
        await self._resume(
            pause=RATE_LIMIT_PAUSED_UNTIL,
            lifecycle=self._outbox.stream,
            last_event=RATE_LIMIT_LAST_EVENT_AT,
            fields=fields,
            event_at=event_at_ms or now_ms(),
            **self._outbox.args(),
        )
        job_ids = await self._redis.smembers(RATE_LIMIT_DEFERRED)
        if not job_ids:
            return 0
        now = now_ms()
        async with self._redis.pipeline(transaction=True) as pipe:
            for job_id in job_ids:
                pipe.zadd(QUEUE_NAME, {job_id: now}, xx=True)  # only jobs still waiting
            pipe.delete(RATE_LIMIT_DEFERRED)
            await pipe.execute()
        return len(job_ids)
