"""The integrator's own code, called once per lifecycle event (docs/integrator/handlers.md).

`CODAT_HANDLERS=package.module` names a module whose functions are registered for event types,
either with the decorator of the integrators' API (workers.api, which is all such a module imports)

    from workers.api import on

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

Where the module is found (docs/integrator/handlers.md): on the worker's import path. `make run`
puts `handlers/` at the checkout's root on it; the image has /app/handlers on PYTHONPATH, for a
mounted folder. A module that is missing, fails to import, registers nothing, or names a type
that is not a lifecycle event type is refused at start (HandlersRefused: the worker's one
`process.refused_to_start` line, exit 2); `python -m workers.handlers MODULE` runs the same check
(`codat-webhooks status` and `make run` use it).
"""

from __future__ import annotations

import asyncio
import difflib
import importlib
import inspect
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import structlog
from arq import Retry
from arq.connections import ArqRedis
from redis.exceptions import RedisError, ResponseError

from service.core.catalogue import KNOWN_EVENTS, LIFECYCLE_FROM_CODAT, LIFECYCLE_TYPES
from service.stores import keys
from service.stores.keys import ARQ_MAX_TRIES, HANDLERS_GROUP, RUN_HANDLER, handler_job_id
from service.stores.lifecycle import decode
from service.stores.replication import PRIMARY_ONLY, Replication, execute
from workers.api import Handler, registered_types
from workers.api import on as on  # the integrators' import path before workers.api: still works
from workers.job import Job
from workers.jobs import backoff_seconds
from workers.metrics import HANDLER_CALLS, HANDLER_SECONDS

log = structlog.get_logger(__name__)

CLAIM_IDLE_MS = 60_000
SLOW_SECONDS = 5.0


class HandlersRefused(Exception):
    """CODAT_HANDLERS cannot be used; the message is the one line the worker refuses to start with."""


# Where a module is looked for, said when it is not found.
WHERE = (
    "in dev, put it in handlers/ at the checkout's root (`make run` puts that folder on the path: "
    "handlers/myhandlers.py is CODAT_HANDLERS=myhandlers); in the image, mount its folder at "
    "/app/handlers (deploy/docker-compose.yml) or add it to PYTHONPATH"
)
CHECKOUT = Path(__file__).resolve().parent.parent


def load(module_name: str) -> dict[str, dict[str, Handler]]:
    """{event type: {handler name: function}} from the module CODAT_HANDLERS names; HandlersRefused
    if it cannot be imported, registers nothing, or registers a type no lifecycle event has."""
    module = _import(module_name)
    found: dict[str, dict[str, Handler]] = {}
    problems: list[str] = []

    def add(event_type: object, function: object) -> None:
        name = f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', repr(function))}"
        if not callable(function):
            problems.append(f"HANDLERS[{event_type!r}] holds {function!r}, which is not a function")
        elif not isinstance(event_type, str) or event_type not in LIFECYCLE_TYPES:
            problems.append(f"{name} is registered for {_not_a_type(event_type)}")
        else:
            found.setdefault(event_type, {})[name] = function

    for _, function in inspect.getmembers(module, callable):
        for event_type in registered_types(function):
            add(event_type, function)
    mapping = getattr(module, "HANDLERS", None) or {}
    if not isinstance(mapping, dict):
        problems.append("HANDLERS is not a dict of {lifecycle type: [function, ...]}")
        mapping = {}
    for event_type, functions in mapping.items():
        for function in functions if isinstance(functions, list | tuple) else [functions]:
            add(event_type, function)
    if problems:
        raise HandlersRefused(f"CODAT_HANDLERS={module_name}: " + "; ".join(problems))
    if not found:
        raise HandlersRefused(
            f"CODAT_HANDLERS={module_name}: the module registers no handler: decorate a function with "
            "@on('connection.linked') (from workers.api), or give HANDLERS = {'connection.linked': [function]}"
        )
    return found


def _not_a_type(event_type: object) -> str:
    listed = ", ".join(LIFECYCLE_TYPES)
    if not isinstance(event_type, str):
        return f"{event_type!r}, not a lifecycle event type (those are: {listed})"
    derived = LIFECYCLE_FROM_CODAT.get(event_type)
    if derived:
        return (
            f"{event_type!r}, a Codat webhook type, not a lifecycle event: handlers get what the workers derive, "
            f"here {' or '.join(repr(t) for t in derived)}"
        )
    if event_type in KNOWN_EVENTS:
        return f"{event_type!r}, a Codat webhook type from which no lifecycle event is derived (those are: {listed})"
    near = difflib.get_close_matches(event_type, LIFECYCLE_TYPES, n=1, cutoff=0.6)
    if near:
        return f"{event_type!r}, not a lifecycle event type: did you mean {near[0]!r}?"
    return f"{event_type!r}, not a lifecycle event type (those are: {listed})"


def _import(module_name: str) -> Any:
    prefix = f"CODAT_HANDLERS={module_name}"
    if not all(part.isidentifier() for part in module_name.split(".")):
        hint = module_name.removesuffix(".py").replace("/", ".").rpartition("handlers.")[2] or "myhandlers"
        raise HandlersRefused(f"{prefix}: not a module name: give its dotted name (e.g. {hint}), not a file path")
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(f"{exc.name}.")):
            at_root = exc.name == module_name and (CHECKOUT / f"{module_name}.py").exists()
            where = f"{module_name}.py is at the checkout's root, which is not on the path: move it into handlers/"
            found = where if at_root else WHERE
            raise HandlersRefused(f"{prefix}: no module named {exc.name!r} on the worker's path: {found}") from None
        raise HandlersRefused(f"{prefix}: importing it failed: {_described(exc)}") from None
    except (Exception, SystemExit) as exc:
        raise HandlersRefused(f"{prefix}: importing it raised {_described(exc)}") from None


def _described(exc: BaseException) -> str:
    """The error and where it happened, on one line."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{type(exc).__name__}: {exc.msg} ({exc.filename}, line {exc.lineno})"
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "importlib" not in f.filename]
    return f"{text} ({frames[-1].filename}, line {frames[-1].lineno})" if frames else text


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _group_gone(exc: BaseException) -> bool:
    """NOGROUP, or (a reader blocked when the stream was deleted) the stream no longer exists."""
    text = str(exc)
    return "NOGROUP" in text or "no longer exists" in text


def by_name(registry: dict[str, dict[str, Handler]]) -> dict[str, Handler]:
    return {name: function for named in registry.values() for name, function in named.items()}


class Dispatcher:
    """Stream -> one handler job per (handler, event), in the handlers' consumer group."""

    def __init__(
        self,
        redis: ArqRedis,
        stream: str,
        registry: dict[str, dict[str, Handler]],
        consumer: str,
        replication: Replication = PRIMARY_ONLY,
    ) -> None:
        """`redis`: the worker's arq client, which queues the handler jobs as arq's own.
        `replication`: a handler's "queued once" mark (and the job before it, on the same
        client) is on that many replicas before the stream entry is acknowledged."""
        self._redis = redis
        self._replication = replication
        self._stream = stream
        self._registry = registry
        self._consumer = consumer
        self._last_id: bytes | str = "$"

    async def run(self) -> None:
        backoff = 0.1
        group_ready = False
        while True:
            try:
                if not group_ready:
                    await self._ensure_group()
                    group_ready = True
                await self._claim_abandoned()
                answer = await self._redis.xreadgroup(
                    HANDLERS_GROUP, self._consumer, {self._stream: ">"}, count=100, block=1000
                )
                for _, entries in answer or []:
                    await self._dispatch(entries)
                    if entries:
                        self._last_id = entries[-1][0]
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if _group_gone(exc):
                    # The stream deleted, a restart without persistence, a failover to a replica
                    # that never had the group: made again, from the last entry this worker
                    # dispatched (a handler's marker keeps it from being queued twice).
                    log.warning("handlers.group_recreated", stream=self._stream, from_id=_text(self._last_id))
                    group_ready = False
                else:  # the worker's poll loop logs the outage itself
                    log.debug("handlers.dispatch_waiting", error=str(exc))
                await asyncio.sleep(backoff)
                backoff = min(5.0, backoff * 2)
            except Exception:  # a bug, or an entry it cannot read: say so, and keep dispatching
                log.exception("handlers.dispatch_failed")
                await asyncio.sleep(backoff)
                backoff = min(5.0, backoff * 2)

    async def _ensure_group(self) -> None:
        try:
            # From now on (made again: from the last entry dispatched): turning handlers on does
            # not replay the days the stream holds.
            await self._redis.xgroup_create(self._stream, HANDLERS_GROUP, id=self._last_id, mkstream=True)
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
        await self._redis.enqueue_job(RUN_HANDLER, name, event, _job_id=handler_job_id(name, event["id"]))
        # Replicated before the entry is acknowledged: short (NotReplicated, a RedisError), the
        # entry stays pending and is dispatched again, where arq refuses the same job id.
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(marker, 1, ex=keys.TRACE_TTL_SECONDS)
        await execute(self._redis, pipe, self._replication)


async def run_handler(ctx: dict[str, Any], name: str, event: dict[str, Any]) -> str:
    job = Job.of(ctx)
    deps, job_try = job.deps, job.attempt
    structlog.contextvars.bind_contextvars(
        handler=name,
        lifecycle_id=event.get("id"),
        lifecycle_type=event.get("type"),
        webhook_id=event.get("webhookId") or None,
        company_id=event.get("companyId"),
        connection_id=event.get("connectionId"),
        job_id=job.id,
        job_try=job_try,
    )
    function = deps.handlers.get(name)
    if function is None:
        return await _dead_letter(job, name, event, "handler_missing", f"no handler {name} in CODAT_HANDLERS")
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
            return await _dead_letter(job, name, event, "handler_failed", error)
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


async def _dead_letter(job: Job, name: str, event: dict[str, Any], reason: str, error: str) -> str:
    record = {
        "event_type": event.get("type"),
        # The delivery behind the lifecycle event (none when the reconcile derived it), so that
        # the letter is found with the delivery's own; the lifecycle event by its id.
        "message_id": event.get("webhookId") or None,
        "lifecycle_id": event.get("id"),
        "company_id": event.get("companyId"),
        "connection_id": event.get("connectionId"),
        "handler": name,
        "lifecycle": event,
    }
    letter_id = await job.deps.dead_letters.add(
        record,
        reason=reason,
        error=error,
        job_id=job.id,
        attempts=job.attempt,
        job=(RUN_HANDLER, [name, event]),
    )
    HANDLER_CALLS.labels(name, "dead_lettered").inc()
    log.error("handler.dead_lettered", reason=reason, dead_letter_id=letter_id, error=error)
    return "dead_lettered"


def main(argv: list[str] | None = None) -> int:
    """`python -m workers.handlers MODULE`: the check the worker makes at start, alone: exit 0 and
    what it registers, or the refusal line (process.refused_to_start) and exit 2."""
    import argparse

    from service.core.logs import refuse

    parser = argparse.ArgumentParser(prog="python -m workers.handlers", description=main.__doc__)
    parser.add_argument("module", help="what CODAT_HANDLERS names, e.g. myhandlers")
    args = parser.parse_args(argv)
    try:
        registry = load(args.module)
    except HandlersRefused as exc:
        refuse(str(exc))
        return 2
    for event_type, named in sorted(registry.items()):
        print(f"{event_type}: {', '.join(sorted(named))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
