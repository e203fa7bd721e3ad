"""Know when Codat stops delivering (issue 23; docs/operator/delivery-health.md): an arq cron job, one
run per WATCH_INTERVAL_SECONDS across all workers, that

- counts the Linked connections (silence only means something while there are some) and logs
  `delivery.silence` when nothing was taken for SILENCE_ALERT_SECONDS while there are;
- reads Codat's `GET /webhooks` and finds this service's consumer(s) by PUBLIC_WEBHOOK_URL
  (without it: says so once per process and skips), reporting each problem as a stable log event
  every run while it lasts, in Redis for the scrape (`codat_webhook_consumer_problem{problem}`),
  the console and `codat-webhooks status`:
  - `missing`: no consumer for the URL (deleted, or registered under another URL);
  - `disabled`: `disabled: true` (Codat disables an endpoint failing for 5 days; the Portal can);
    recorded as a gap from the last delivery taken until it is seen enabled again;
  - `lacking_event_types`: the consumers for the URL together lack a type the service acts on
    (an empty `eventTypes` is every type, as Codat/Svix treat it);
  - `duplicated`: more than one consumer for the URL: each message arrives once per consumer.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any
from urllib.parse import urlsplit

import structlog

from service.core.catalogue import CONNECTION_EVENTS, LEGACY_EVENTS, RATE_LIMIT_EVENTS, SYNC_EVENTS
from service.core.clock import iso, now_ms
from service.stores import delivery_health, keys
from service.stores.gaps import GapStore
from workers.codat import CodatClient, CodatError
from workers.job import Job
from workers.rate_limit import Paused

log = structlog.get_logger(__name__)

# What the workers act on: the connection, sync and rate-limit types, as Codat's consumers name
# them (the legacy rule-based names arrive through Codat's older rules, not through a consumer).
REQUIRED_EVENT_TYPES = tuple(sorted((CONNECTION_EVENTS | SYNC_EVENTS | RATE_LIMIT_EVENTS) - LEGACY_EVENTS))
_said_not_configured = False


async def delivery_watch_tick(ctx: dict[str, Any]) -> str:
    """arq cron: a run when one is due (one per interval across all workers), else nothing."""
    job = Job.of(ctx)
    try:
        return await _tick(job)
    finally:
        # arq keeps a cron job's in-progress key for 60 s after it ended (keep_cronjob_progress), so
        # that no worker runs the same tick twice; WATCH_DUE does that here already, and a key left
        # would make a queue with nothing to do look busy for a minute after every tick.
        if job.id:
            await job.redis.delete(keys.IN_PROGRESS_KEY_PREFIX + job.id)


async def _tick(job: Job) -> str:
    deps = job.deps
    settings, redis = deps.settings, job.redis
    interval_ms = settings.watch_interval_seconds * 1000
    if not interval_ms:
        return "off"
    # Held for the interval, less a little, so that the tick one interval later finds it gone.
    if not await redis.set(keys.WATCH_DUE, os.getpid(), nx=True, px=max(500, interval_ms - 500)):
        return "not_due"
    linked = await delivery_health.count_linked(redis)
    await delivery_health.save_linked(redis, linked)
    await check_silence(redis, settings.silence_alert_seconds, linked)
    if not settings.public_webhook_url:
        _say_not_configured()
        return "not_configured"
    try:
        async with asyncio.timeout(deps.call_budget_seconds):  # inside the job timeout
            consumers = await list_consumers(deps.codat)
    except (CodatError, Paused, TimeoutError) as exc:
        # Not a finding about the consumer: the next run asks again (the lock is given back).
        log.warning("consumer_watch.failed", error=str(exc) or type(exc).__name__, status=getattr(exc, "status", None))
        await redis.delete(keys.WATCH_DUE)
        return "failed"
    report = assess(settings.public_webhook_url, consumers, now_ms())
    await delivery_health.save_consumer_report(redis, report)
    await _track_disabled(GapStore(redis), report, redis)
    _log_report(report)
    return "problems" if report["problems"] else "ok"


async def list_consumers(codat: CodatClient) -> list[dict[str, Any]]:
    """`GET /webhooks`: every webhook consumer of the client. Through the client's own call, so the
    rate-limit pause, a 429 and the metrics apply as to every other call (workers.codat)."""
    response = await codat._call("list_consumers", "GET", "/webhooks")
    body = response.json()
    results = body.get("results") if isinstance(body, dict) else None
    return [c for c in results if isinstance(c, dict)] if isinstance(results, list) else []


def normalise(url: str) -> str:
    """Scheme and host in lower case, no default port, no trailing slash: how Codat's copy and
    PUBLIC_WEBHOOK_URL are compared."""
    try:
        parts = urlsplit(url.strip())
        scheme, host, port = parts.scheme.lower(), (parts.hostname or "").lower(), parts.port
    except ValueError:
        return url.strip()
    if port is not None and (scheme, port) not in (("https", 443), ("http", 80)):
        host = f"{host}:{port}"
    path = parts.path.rstrip("/")
    return f"{scheme}://{host}{path}" + (f"?{parts.query}" if parts.query else "")


def assess(url: str, consumers: list[dict[str, Any]], checked_at: int) -> dict[str, Any]:
    """The watch's report: {checkedAt, url, registered (how many consumers Codat has), consumers
    (this URL's: id, disabled, eventTypes), problems [{kind, ...}]}."""
    wanted = normalise(url)
    mine = [c for c in consumers if isinstance(c.get("url"), str) and normalise(c["url"]) == wanted]
    problems: list[dict[str, Any]] = []
    if not mine:
        problems.append({"kind": "missing"})
    if len(mine) > 1:
        problems.append({"kind": "duplicated", "consumerIds": [c.get("id") for c in mine]})
    for consumer in mine:
        if consumer.get("disabled"):
            problems.append({"kind": "disabled", "consumerId": consumer.get("id")})
    enabled = [c for c in mine if not c.get("disabled")]
    if enabled:
        types: set[str] = set()
        every = False
        for consumer in enabled:
            listed = consumer.get("eventTypes")
            if not listed:  # none given: every type
                every = True
            elif isinstance(listed, list):
                types.update(t for t in listed if isinstance(t, str))
        lacking = [] if every else [t for t in REQUIRED_EVENT_TYPES if t not in types]
        if lacking:
            problems.append({"kind": "lacking_event_types", "missingTypes": lacking})
    return {
        "checkedAt": checked_at,
        "url": url,
        "registered": len(consumers),
        "consumers": [
            {"id": c.get("id"), "disabled": bool(c.get("disabled")), "eventTypes": c.get("eventTypes") or []}
            for c in mine
        ],
        "problems": problems,
    }


async def check_silence(redis: Any, silence_seconds: int, linked: int) -> bool:
    """Log `delivery.silence` when the last delivery taken is older than the threshold while
    Linked connections exist (the same rule as the CodatDeliveriesSilent alert)."""
    last = await delivery_health.last_accepted(redis)
    newest = max(last.values(), default=None)
    if not linked or newest is None:
        return False
    silent_ms = now_ms() - newest
    if silent_ms <= silence_seconds * 1000:
        return False
    log.warning(
        "delivery.silence",
        silent_seconds=silent_ms // 1000,
        last_accepted_at=iso(newest),
        linked_connections=linked,
        threshold_seconds=silence_seconds,
        last_accepted={family: iso(at) for family, at in last.items()},
    )
    return True


async def _track_disabled(gaps: GapStore, report: dict[str, Any], redis: Any) -> None:
    """A disabled consumer opens a gap from the last delivery taken; enabled again (or gone), closed."""
    now = now_ms()
    disabled = {p["consumerId"] for p in report["problems"] if p["kind"] == "disabled"}
    last = await delivery_health.last_accepted(redis)
    newest = max(last.values(), default=None)
    for consumer_id in disabled:
        opened = await gaps.open(
            f"consumer_disabled:{consumer_id}",
            "consumer_disabled",
            newest or now,
            consumerId=consumer_id,
            url=report["url"],
            lastAccepted=newest,
        )
        if opened:
            log.warning(
                "delivery.gap_recorded",
                kind="consumer_disabled",
                start=iso(newest or now),
                end=None,
                consumer_id=consumer_id,
                covered_by_retries=False,
            )
    for gap in await gaps.list(limit=500, now=now):
        if gap["kind"] == "consumer_disabled" and gap["open"] and gap.get("consumerId") not in disabled:
            closed = await gaps.close(gap["id"], now)
            if closed:
                log.info("delivery.gap_closed", kind="consumer_disabled", consumer_id=gap.get("consumerId"))


def _log_report(report: dict[str, Any]) -> None:
    url = report["url"]
    for problem in report["problems"]:
        kind = problem["kind"]
        if kind == "missing":
            log.error("consumer_watch.missing", url=url, registered=report["registered"])
        elif kind == "disabled":
            log.error("consumer_watch.disabled", url=url, consumer_id=problem["consumerId"])
        elif kind == "lacking_event_types":
            log.error("consumer_watch.lacking_event_types", url=url, missing_types=problem["missingTypes"])
        elif kind == "duplicated":
            log.warning("consumer_watch.duplicated", url=url, consumer_ids=problem["consumerIds"])
    if not report["problems"]:
        log.info("consumer_watch.ok", url=url, consumer_id=report["consumers"][0]["id"])


def _say_not_configured() -> None:
    global _said_not_configured
    if not _said_not_configured:
        _said_not_configured = True
        log.warning(
            "consumer_watch.not_configured",
            reason="PUBLIC_WEBHOOK_URL is not set: set it to this service's URL as registered with Codat",
        )
