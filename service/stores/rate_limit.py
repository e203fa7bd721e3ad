"""The rate-limit pause: while it is set, no worker calls Codat. Jobs it deferred are
remembered, so that a reset can put them back at the head of the queue at once."""

from __future__ import annotations

import orjson
from redis.asyncio import Redis

from service.core.clock import iso, now_ms
from service.stores.keys import QUEUE_NAME, RATE_LIMIT_DEFERRED, RATE_LIMIT_LAST_EVENT_AT, RATE_LIMIT_PAUSED_UNTIL
from service.stores.outbox import EMIT, Outbox

# Both: a reached or reset older (by Codat's time) than the last one taken is a late delivery
# and changes nothing; at the same time, a reset wins (calls go out; Codat says 429 if it must).
# KEYS: the pause, the stream, the last event's time. ARGV: until (ms), now (ms), fields (JSON),
# then Outbox.args, then the event's time (ms). A pause that only repeats (or shortens) the one
# in force changes nothing and tells nothing.
_PAUSE = (
    EMIT
    + """
local last_at, last_kind = string.match(redis.call('GET', KEYS[3]) or '-1:none', '^(-?%d+):(%a+)$')
local at = tonumber(ARGV[7])
if at < tonumber(last_at) or (at == tonumber(last_at) and last_kind == 'resumed') then return 0 end
redis.call('SET', KEYS[3], ARGV[7] .. ':paused')
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current >= tonumber(ARGV[1]) then return 0 end
local fields = cjson.decode(ARGV[3])
fields['derivedAt'] = ARGV[6]
if current <= tonumber(ARGV[2]) then emit(KEYS[2], ARGV[4], ARGV[5], 'rate_limit.paused', fields) end
redis.call('SET', KEYS[1], ARGV[1], 'PX', math.max(1, tonumber(ARGV[1]) - tonumber(ARGV[2])))
return 1
"""
)
# KEYS: the pause, the stream, the last event's time. ARGV: fields (JSON), then Outbox.args,
# then the event's time (ms). Resumed only if paused.
_RESUME = (
    EMIT
    + """
local last_at = string.match(redis.call('GET', KEYS[3]) or '-1:none', '^(-?%d+):')
if tonumber(ARGV[5]) < tonumber(last_at) then return 0 end
redis.call('SET', KEYS[3], ARGV[5] .. ':resumed')
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local fields = cjson.decode(ARGV[1])
fields['derivedAt'] = ARGV[4]
emit(KEYS[2], ARGV[2], ARGV[3], 'rate_limit.resumed', fields)
redis.call('DEL', KEYS[1])
return 1
"""
)


class RateLimits:
    def __init__(self, redis: Redis, outbox: Outbox | None = None) -> None:
        self._redis = redis
        self._outbox = outbox or Outbox()
        self._pause = redis.register_script(_PAUSE)
        self._resume = redis.register_script(_RESUME)

    async def paused_until(self) -> int | None:
        """Epoch ms the pause lasts until, or None when calls may go out."""
        until = await self._redis.get(RATE_LIMIT_PAUSED_UNTIL)
        return int(until) if until is not None and int(until) > now_ms() else None

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
        args = [until_ms, now_ms(), orjson.dumps(fields), *self._outbox.args(), event_at_ms or now_ms()]
        names = [RATE_LIMIT_PAUSED_UNTIL, self._outbox.stream, RATE_LIMIT_LAST_EVENT_AT]
        return bool(await self._pause(keys=names, args=args))

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
        names = [RATE_LIMIT_PAUSED_UNTIL, self._outbox.stream, RATE_LIMIT_LAST_EVENT_AT]
        await self._resume(keys=names, args=[fields, *self._outbox.args(), event_at_ms or now_ms()])
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
