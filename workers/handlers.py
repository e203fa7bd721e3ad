"""The integrator's own code, called once per lifecycle event (README "Lifecycle events").

`CODAT_HANDLERS=package.module` names a module whose functions are registered for event types,
either with the decorator

    from workers.handlers import on

    @on("connection.linked", "connection.relinked")
    async def mark_onboarded(event: dict) -> None: ...

or with a mapping `HANDLERS = {"sync.completed": [read_invoices]}` in the module. A handler gets
the event as a dict (the JSON Schema in service/core/lifecycle.schema.json) and may be async or
plain (a plain one runs in a thread). Its name is `module.function`.

How a call runs: every worker with handlers reads the stream in one consumer group
(XREADGROUP; entries a dead worker read but never acknowledged are claimed after a minute with
XAUTOCLAIM) and queues one arq job per (handler, event), at most once (a marker kept for the
dedup horizon), then acknowledges. Each job calls one handler: an exception is retried with
backoff and, after CODAT_HANDLER_MAX_TRIES (8), becomes a dead letter of its own, whose replay runs only
that handler. A handler never re-runs the state machine or a Codat call, and one that fails or
is slow holds up nobody else.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import time
from collections.abc import Callable
from typing import Any

import structlog
from arq import Retry
from redis.exceptions import RedisError, ResponseError

from service.stores import keys
from service.stores.keys import ARQ_MAX_TRIES, HANDLERS_GROUP
from service.stores.lifecycle import decode
from workers.deps import deps_of
from workers.jobs import backoff_seconds
from workers.metrics import HANDLER_CALLS, HANDLER_SECONDS

log = structlog.get_logger("workers.handlers")

RUN_HANDLER = "run_handler"
CLAIM_IDLE_MS = 60_000
SLOW_SECONDS = 5.0

Handler = Callable[[dict[str, Any]], Any]


def on(*event_types: str) -> Callable[[Handler], Handler]:
    """Register the decorated function for these lifecycle event types."""

    def register(function: Handler) -> Handler:
        function.__codat_event_types__ = (*getattr(function, "__codat_event_types__", ()), *event_types)  # type: ignore[attr-defined]
        return function

    return register


def load(module_name: str) -> dict[str, dict[str, Handler]]:
    """{event type: {handler name: function}} from the module CODAT_HANDLERS names."""
    module = importlib.import_module(module_name)
    found: dict[str, dict[str, Handler]] = {}

    def add(event_type: str, function: Handler) -> None:
        found.setdefault(event_type, {})[f"{function.__module__}.{function.__qualname__}"] = function

    for _, function in inspect.getmembers(module, callable):
        for event_type in getattr(function, "__codat_event_types__", ()):
            add(event_type, function)
    for event_type, functions in (getattr(module, "HANDLERS", None) or {}).items():
        for function in functions if isinstance(functions, list | tuple) else [functions]:
            add(event_type, function)
    return found


def by_name(registry: dict[str, dict[str, Handler]]) -> dict[str, Handler]:
    return {name: function for named in registry.values() for name, function in named.items()}


class Dispatcher:
    """Stream -> one handler job per (handler, event), in the handlers' consumer group."""

    def __init__(self, ctx: dict[str, Any], registry: dict[str, dict[str, Handler]], consumer: str) -> None:
        self._ctx = ctx
        self._redis = ctx["redis"]
        self._stream = deps_of(ctx).settings.events_stream
        self._registry = registry
        self._consumer = consumer

    async def run(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._ensure_group()
                await self._claim_abandoned()
                answer = await self._redis.xreadgroup(
                    HANDLERS_GROUP, self._consumer, {self._stream: ">"}, count=100, block=1000
                )
                for _, entries in answer or []:
                    await self._dispatch(entries)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:  # the worker's poll loop logs the outage itself
                log.debug("handlers.dispatch_waiting", error=str(exc))
                await asyncio.sleep(backoff)
                backoff = min(5.0, backoff * 2)
            except Exception:  # a bug, or an entry it cannot read: say so, and keep dispatching
                log.exception("handlers.dispatch_failed")
                await asyncio.sleep(backoff)
                backoff = min(5.0, backoff * 2)

    async def _ensure_group(self) -> None:
        try:
            # From now on: turning handlers on does not replay the days the stream holds.
            await self._redis.xgroup_create(self._stream, HANDLERS_GROUP, id="$", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _claim_abandoned(self) -> None:
        claimed = await self._redis.xautoclaim(
            self._stream, HANDLERS_GROUP, self._consumer, min_idle_time=CLAIM_IDLE_MS, start_id="0-0", count=100
        )
        entries = claimed[1] if claimed else []
        if entries:
            log.info("handlers.claimed_abandoned", entries=len(entries))
            await self._dispatch(entries)

    async def _dispatch(self, entries: list[Any]) -> None:
        for stream_id, fields in entries:
            event = decode(stream_id, fields) if fields else {}  # trimmed away meanwhile: empty
            if not isinstance(event.get("id"), str):
                log.error("handlers.unreadable_entry", stream_id=str(stream_id))
            else:
                for name in self._registry.get(event.get("type", ""), {}):
                    await self._enqueue_once(name, event)
            await self._redis.xack(self._stream, HANDLERS_GROUP, stream_id)

    async def _enqueue_once(self, name: str, event: dict[str, Any]) -> None:
        # Queued before it is marked, marked before the entry is acknowledged: a crash between
        # any two leaves the entry pending, and its redelivery finds the job (arq refuses a job
        # id whose job or result it still holds: RUN_HANDLER keeps results an hour, far past
        # CLAIM_IDLE_MS) or the marker, never neither.
        marker = f"{keys.HANDLED_PREFIX}{name}:{event['id']}"
        if await self._redis.exists(marker):
            return
        await self._redis.enqueue_job(RUN_HANDLER, name, event, _job_id=f"handler:{name}:{event['id']}")
        await self._redis.set(marker, 1, ex=keys.TRACE_TTL_SECONDS)


async def run_handler(ctx: dict[str, Any], name: str, event: dict[str, Any]) -> str:
    deps = deps_of(ctx)
    job_try: int = ctx.get("job_try", 1)
    structlog.contextvars.bind_contextvars(
        handler=name,
        lifecycle_id=event.get("id"),
        lifecycle_type=event.get("type"),
        company_id=event.get("companyId"),
        connection_id=event.get("connectionId"),
        job_id=ctx.get("job_id"),
        job_try=job_try,
    )
    function = deps.handlers.get(name)
    if function is None:
        return await _dead_letter(ctx, name, event, "handler_missing", f"no handler {name} in CODAT_HANDLERS")
    started = time.perf_counter()
    try:
        async with asyncio.timeout(deps.call_budget_seconds):
            await (function(event) if inspect.iscoroutinefunction(function) else asyncio.to_thread(function, event))
    except Exception as exc:
        seconds = time.perf_counter() - started
        HANDLER_CALLS.labels(name, "failed").inc()
        HANDLER_SECONDS.labels(name).observe(seconds)
        error = f"{type(exc).__name__}: {exc}"
        if job_try >= min(deps.settings.handler_max_tries, ARQ_MAX_TRIES - 1):
            return await _dead_letter(ctx, name, event, "handler_failed", error)
        delay = backoff_seconds(job_try, deps.settings.retry_base_seconds)
        log.warning("handler.failed", error=error, retry_in_seconds=round(delay, 3), seconds=round(seconds, 3))
        raise Retry(defer=delay) from None
    seconds = time.perf_counter() - started
    HANDLER_CALLS.labels(name, "completed").inc()
    HANDLER_SECONDS.labels(name).observe(seconds)
    if seconds > SLOW_SECONDS:
        log.warning("handler.slow", seconds=round(seconds, 3))
    log.info("handler.completed", seconds=round(seconds, 3))
    return "completed"


async def _dead_letter(ctx: dict[str, Any], name: str, event: dict[str, Any], reason: str, error: str) -> str:
    record = {
        "event_type": event.get("type"),
        "message_id": event.get("id"),
        "company_id": event.get("companyId"),
        "connection_id": event.get("connectionId"),
        "handler": name,
        "lifecycle": event,
    }
    letter_id = await deps_of(ctx).dead_letters.add(
        record,
        reason=reason,
        error=error,
        job_id=ctx.get("job_id"),
        attempts=ctx.get("job_try"),
        job=(RUN_HANDLER, [name, event]),
    )
    HANDLER_CALLS.labels(name, "dead_lettered").inc()
    log.error("handler.dead_lettered", reason=reason, dead_letter_id=letter_id, error=error)
    return "dead_lettered"
