"""/ops: what operators ask the service. Mounted only when OPS_TOKEN is set (README, "The contract"), and
every request must carry `Authorization: Bearer $OPS_TOKEN`."""

from __future__ import annotations

import hmac

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.core.clock import iso
from service.stores.connections import ConnectionStore
from service.stores.deadletters import DeadLetters
from service.stores.lifecycle import LifecycleStream
from service.stores.reconcile import ReconcileStore
from service.stores.syncs import SyncStore

log = structlog.get_logger("service.ops")


def ops_routes(
    token: str,
    connections: ConnectionStore,
    dead_letters: DeadLetters,
    syncs: SyncStore,
    reconciles: ReconcileStore,
    lifecycle: LifecycleStream,
) -> list[Route]:
    expected = f"Bearer {token}".encode()

    def refused(request: Request) -> JSONResponse | None:
        given = request.headers.get("authorization", "").encode("latin-1")
        if hmac.compare_digest(given, expected):
            return None
        log.warning("ops.unauthorized", path=request.url.path)
        return JSONResponse({"error": "unauthorized"}, 401, {"WWW-Authenticate": "Bearer"})

    async def connection(request: Request) -> JSONResponse:
        if denial := refused(request):
            return denial
        state = await connections.get(request.path_params["connection_id"])
        if state is None:
            return JSONResponse({"error": "unknown connection"}, 404)
        return JSONResponse(state)

    async def company_syncs(request: Request) -> JSONResponse:
        if denial := refused(request):
            return denial
        company_id = request.path_params["company_id"]
        return JSONResponse({"companyId": company_id, "dataTypes": await syncs.get(company_id)})

    async def list_dead_letters(request: Request) -> JSONResponse:
        if denial := refused(request):
            return denial
        limit = request.query_params.get("limit", "100")
        if not limit.isdigit() or not 1 <= int(limit) <= 1000:
            return JSONResponse({"error": "limit must be 1..1000"}, 400)
        letters = await dead_letters.list(int(limit))
        return JSONResponse({"count": await dead_letters.count(), "deadLetters": letters})

    async def replay(request: Request) -> JSONResponse:
        if denial := refused(request):
            return denial
        letter_id = request.path_params["letter_id"]
        job_id = await dead_letters.replay(letter_id)
        if job_id is None:
            return JSONResponse({"error": "no such dead letter"}, 404)
        log.info("dead_letter.replayed", dead_letter_id=letter_id, job_id=job_id)
        return JSONResponse({"replayed": letter_id, "jobId": job_id}, 202)

    async def events(request: Request) -> JSONResponse:
        if denial := refused(request):
            return denial
        limit = request.query_params.get("limit", "100")
        if not limit.isdigit() or not 1 <= int(limit) <= 1000:
            return JSONResponse({"error": "limit must be 1..1000"}, 400)
        found = await lifecycle.recent(
            int(limit), kind=request.query_params.get("type"), company_id=request.query_params.get("company")
        )
        return JSONResponse({"events": found})

    async def reconcile(request: Request) -> JSONResponse:
        if denial := refused(request):
            return denial
        last, running = await reconciles.last(), await reconciles.current()
        for run in (last, running):  # epoch ms inside, ISO 8601 outside
            for name in ("startedAt", "finishedAt"):
                if run and isinstance(run.get(name), int):
                    run[name] = iso(run[name])
        return JSONResponse({"last": last, "running": running})

    return [
        Route("/ops/reconcile", reconcile, methods=["GET"]),
        Route("/ops/events", events, methods=["GET"]),
        Route("/ops/connections/{connection_id}", connection, methods=["GET"]),
        Route("/ops/companies/{company_id}/syncs", company_syncs, methods=["GET"]),
        Route("/ops/dead-letters", list_dead_letters, methods=["GET"]),
        Route("/ops/dead-letters/{letter_id}/replay", replay, methods=["POST"]),
    ]
