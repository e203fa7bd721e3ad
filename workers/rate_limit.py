"""client.rateLimit.reached pauses every outgoing Codat call until its expiry, or until
client.rateLimit.reset. Paused jobs are deferred, not failed, and a reset wakes them at once."""

from __future__ import annotations

import structlog

from service.core.clock import iso, now_ms
from service.core.events import Event
from service.stores.rate_limit import RateLimits

log = structlog.get_logger(__name__)

# An expiry that cannot be read still means "stop": wait this long, then try again.
UNREADABLE_EXPIRY_PAUSE_MS = 15 * 60 * 1000


class Paused(Exception):
    def __init__(self, until_ms: int) -> None:
        super().__init__(f"Codat calls paused until {iso(until_ms)}")
        self.until_ms = until_ms


class RateLimitGate:
    """Runs before every Codat call (workers.codat.CodatClient's `before_call`)."""

    def __init__(self, rate_limits: RateLimits) -> None:
        self._rate_limits = rate_limits

    async def __call__(self) -> None:
        until = await self._rate_limits.paused_until()
        if until is not None:
            raise Paused(until)


async def handle(rate_limits: RateLimits, event: Event) -> str:
    if event.rate_limit_reached:
        until = event.rate_limit_expiry_ms
        if until is None:
            until = now_ms() + UNREADABLE_EXPIRY_PAUSE_MS
            log.warning("rate_limit.unreadable_expiry", expiry=event.rate_limit_expiry, paused_until=iso(until))
        if until <= now_ms():
            log.warning("rate_limit.reached", paused_until=iso(until), paused=False, expiry_past=True)
            return "expired"
        at = event.generated_ms or event.received_at_ms
        await rate_limits.pause(
            until,
            event.generated_date,
            event.daily_quota,
            event_at_ms=at,
            webhook_id=event.message_id,
            codat_event_type=event.event_type,
        )
        log.warning("rate_limit.reached", paused_until=iso(until), paused=True, daily_quota=event.daily_quota)
        return "paused"
    woken = await rate_limits.resume(
        event.generated_date,
        event_at_ms=event.generated_ms or event.received_at_ms,
        webhook_id=event.message_id,
        codat_event_type=event.event_type,
    )
    log.info("rate_limit.reset", woken_jobs=woken)
    return "resumed"
