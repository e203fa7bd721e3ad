"""/ops: what operators ask the service. Mounted only when OPS_TOKEN is set (README.md, "The contract"), and
every request must carry `Authorization: Bearer $OPS_TOKEN`.

Every route goes through one guard (`guarded`), so none can differ from the others in how it
refuses a wrong token (decided by the one authentication layer, service.web.auth, shared with the
console: compared in constant time, answered at the pace of service.web.guessing), in how it
answers while Redis is away (503 with Retry-After, a JSON body, no traceback), or in
masking: every answer passes through the credential masker before it is written out, whatever a
stored record holds. The headers (no-store, nosniff, ...) come from service.web.headers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.core.clock import iso
from service.web.auth import OpsAuth
from service.web.deps import WebDeps

log = structlog.get_logger(__name__)

RETRY_AFTER_SECONDS = 5  # while Redis is away
Answer = tuple[Any, int]  # JSON content, status
Handler = Callable[[Request], Awaitable[Answer]]


def ops_routes(deps: WebDeps, auth: OpsAuth) -> list[Route]:
    connections, dead_letters, syncs = deps.connections, deps.dead_letters, deps.syncs
    reconciles, lifecycle, mask = deps.reconciles, deps.lifecycle, deps.mask

    def guarded(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            if not await auth.bearer(request):  # logged, and answered at its turn
                return JSONResponse({"error": "unauthorized"}, 401, {"WWW-Authenticate": "Bearer"})
            try:
                content, status = await handler(request)
            except (RedisError, OSError) as exc:
                log.warning("ops.redis_unavailable", path=request.url.path, error=type(exc).__name__)
                return JSONResponse(
                    {"error": "redis unavailable", "redis": type(exc).__name__},
                    503,
                    {"Retry-After": str(RETRY_AFTER_SECONDS)},
                )
            return JSONResponse(mask.value(content), status)

        return endpoint

    def limit_of(request: Request) -> int | None:
        limit = request.query_params.get("limit", "100")
        return int(limit) if limit.isdigit() and 1 <= int(limit) <= 1000 else None

    async def connection(request: Request) -> Answer:
        state = await connections.get(request.path_params["connection_id"])
        if state is None:
            return {"error": "unknown connection"}, 404
        return state, 200

    async def company_syncs(request: Request) -> Answer:
        company_id = request.path_params["company_id"]
        return {"companyId": company_id, "dataTypes": await syncs.get(company_id)}, 200

    async def list_dead_letters(request: Request) -> Answer:
        if (limit := limit_of(request)) is None:
            return {"error": "limit must be 1..1000"}, 400
        letters = await dead_letters.list(limit)
        return {"count": await dead_letters.count(), "deadLetters": letters}, 200

    async def replay(request: Request) -> Answer:
        letter_id = request.path_params["letter_id"]
        job_id = await dead_letters.replay(letter_id)
        if job_id is None:
            return {"error": "no such dead letter"}, 404
        log.info("dead_letter.replayed", dead_letter_id=letter_id, job_id=job_id)
        return {"replayed": letter_id, "jobId": job_id}, 202

    async def events(request: Request) -> Answer:
        if (limit := limit_of(request)) is None:
            return {"error": "limit must be 1..1000"}, 400
        found = await lifecycle.recent(
            limit, kind=request.query_params.get("type"), company_id=request.query_params.get("company")
        )
        return {"events": found}, 200

    async def reconcile(request: Request) -> Answer:
        last, running = await reconciles.last(), await reconciles.current()
        for run in (last, running):  # epoch ms inside, ISO 8601 outside
            for name in ("startedAt", "finishedAt"):
                if run and isinstance(run.get(name), int):
                    run[name] = iso(run[name])
        return {"last": last, "running": running}, 200

    return [
        Route("/ops/reconcile", guarded(reconcile), methods=["GET"]),
        Route("/ops/events", guarded(events), methods=["GET"]),
        Route("/ops/connections/{connection_id}", guarded(connection), methods=["GET"]),
        Route("/ops/companies/{company_id}/syncs", guarded(company_syncs), methods=["GET"]),
        Route("/ops/dead-letters", guarded(list_dead_letters), methods=["GET"]),
        Route("/ops/dead-letters/{letter_id}/replay", guarded(replay), methods=["POST"]),
    ]
