"""A local Codat API for development and tests, as Codat-Platform.json defines the parts the
service uses. Everything is in memory; `/_sandbox/*` lets a test seed state, switch faults on
per company and read back every call received.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import os
import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandbox.state import DEFAULT_DATA_TYPES, Company, Fault, Sandbox

DEV_API_KEY = "sandbox-dev-key"


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    body = {"statusCode": status, "service": "PublicApi", "error": message,
            "correlationId": uuid.uuid4().hex, "canBeRetried": "Unknown", "detailedErrorCode": 0}
    return JSONResponse(body, status, headers or None)


def _page(request: Request, items: list[Any]) -> dict[str, Any]:
    try:
        page = max(1, int(request.query_params.get("page", "1")))
        size = min(5000, max(1, int(request.query_params.get("pageSize", "100"))))
    except ValueError:
        return {"error": "page and pageSize must be numbers"}
    return {"results": items[(page - 1) * size: page * size], "pageNumber": page, "pageSize": size,
            "totalResults": len(items), "_links": {}}


class CodatFront:
    """Authorization, the call log and the faults, in front of every `/companies` route."""

    def __init__(self, app: ASGIApp, sandbox: Sandbox, api_key: str) -> None:
        self.app = app
        self.sandbox = sandbox
        self.expected = f"Basic {base64.b64encode(api_key.encode()).decode()}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/companies"):
            return await self.app(scope, receive, send)
        path = scope["path"]
        parts = path.split("/")
        company_id = parts[2] if len(parts) > 2 else None
        given = dict(scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(given, self.expected):
            return await _error(401, "Unauthorized")(scope, receive, send)
        call = self.sandbox.record(scope["method"], path, scope.get("query_string", b"").decode(), company_id)
        fault = self.sandbox.take_fault(company_id, path)
        if fault and fault.status:
            call["status"] = fault.status
            headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
            return await _error(fault.status, "fault switched on in the sandbox", **headers)(
                scope, receive, send)
        held: list[Message] = []

        async def hold(message: Message) -> None:
            if message["type"] == "http.response.start":
                call["status"] = message["status"]
            held.append(message)

        await self.app(scope, receive, hold)
        if fault and fault.delay:
            # A slow answer: the work is done at once, the reply comes late (a call in flight).
            await asyncio.sleep(fault.delay)
        for message in held:
            await send(message)


def create_app(sandbox: Sandbox | None = None, api_key: str | None = None) -> ASGIApp:
    sandbox = sandbox or Sandbox()
    api_key = api_key or os.environ.get("SANDBOX_API_KEY", DEV_API_KEY)

    def company_of(request: Request) -> Company | None:
        return sandbox.companies.get(request.path_params["company_id"])

    async def create_company(request: Request) -> Response:
        body = await request.json()
        if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not body["name"].strip():
            return _error(400, "name is required")
        company = sandbox.add_company(body["name"], body.get("description"), body.get("platformType"))
        return JSONResponse(company.as_json(str(request.base_url).rstrip("/")))

    async def list_companies(request: Request) -> Response:
        base = str(request.base_url).rstrip("/")
        return JSONResponse(_page(request, [c.as_json(base) for c in sandbox.companies.values()]))

    async def get_company(request: Request) -> Response:
        company = company_of(request)
        if company is None:
            return _error(404, "company not found")
        return JSONResponse(company.as_json(str(request.base_url).rstrip("/")))

    async def list_connections(request: Request) -> Response:
        company = company_of(request)
        if company is None:
            return _error(404, "company not found")
        return JSONResponse(_page(request, list(company.connections.values())))

    async def get_connection(request: Request) -> Response:
        company = company_of(request)
        connection = company and company.connections.get(request.path_params["connection_id"])
        if not connection:
            return _error(404, "connection not found")
        return JSONResponse(connection)

    async def refresh_all(request: Request) -> Response:
        company = company_of(request)
        if company is None:
            return _error(404, "company not found")
        linked = [c for c in company.connections.values() if c["status"] == "Linked"]
        if not linked:
            return _error(400, "company has no linked connection")
        for connection in linked:
            for data_type in DEFAULT_DATA_TYPES:
                sandbox.queue_pull(company, connection["id"], data_type)
        return Response(status_code=204)

    async def refresh_data_type(request: Request) -> Response:
        company = company_of(request)
        if company is None:
            return _error(404, "company not found")
        connection = company.connections.get(request.query_params.get("connectionId", ""))
        if connection is None:
            return _error(404, "connection not found")
        if connection["status"] != "Linked":
            return _error(400, f"connection is {connection['status']}")
        return JSONResponse(sandbox.queue_pull(company, connection["id"], request.path_params["data_type"]))

    async def data_status(request: Request) -> Response:
        company = company_of(request)
        if company is None:
            return _error(404, "company not found")
        latest: dict[str, Any] = {}
        for pull in company.pulls:
            latest[pull["dataType"]] = {"dataType": pull["dataType"], "currentStatus": pull["status"],
                                        "lastSuccessfulSync": pull.get("completed"),
                                        "latestSyncId": pull["id"], "latestSuccessfulSyncId": None}
        return JSONResponse(latest)

    async def history(request: Request) -> Response:
        company = company_of(request)
        if company is None:
            return _error(404, "company not found")
        return JSONResponse(_page(request, sorted(company.pulls, key=lambda p: p["requested"], reverse=True)))

    # Control routes, for tests and the dev walkthrough.
    async def reset(request: Request) -> Response:
        sandbox.reset()
        return Response(status_code=204)

    async def calls(request: Request) -> Response:
        company_id = request.query_params.get("companyId")
        return JSONResponse([c for c in sandbox.calls if company_id in (None, c["companyId"])])

    async def seed_connection(request: Request) -> Response:
        body = await request.json()
        company_id = request.path_params["company_id"]
        company = sandbox.companies.get(company_id) or sandbox.add_company(f"Company {company_id[:8]}",
                                                                         company_id=company_id)
        connection = sandbox.put_connection(company, request.path_params["connection_id"],
                                            body.get("status", "Linked"))
        return JSONResponse(connection)

    async def set_faults(request: Request) -> Response:
        body = await request.json()
        sandbox.faults[request.path_params["company_id"]] = [
            Fault(status=f.get("status"), retry_after=f.get("retryAfter"), delay=f.get("delay", 0.0),
                  times=f.get("times", 1), match=f.get("match", "")) for f in body
        ]
        return Response(status_code=204)

    routes = [
        Route("/companies", create_company, methods=["POST"]),
        Route("/companies", list_companies, methods=["GET"]),
        Route("/companies/{company_id}", get_company, methods=["GET"]),
        Route("/companies/{company_id}/connections", list_connections, methods=["GET"]),
        Route("/companies/{company_id}/connections/{connection_id}", get_connection, methods=["GET"]),
        Route("/companies/{company_id}/data/all", refresh_all, methods=["POST"]),
        Route("/companies/{company_id}/data/queue/{data_type}", refresh_data_type, methods=["POST"]),
        Route("/companies/{company_id}/dataStatus", data_status, methods=["GET"]),
        Route("/companies/{company_id}/data/history", history, methods=["GET"]),
        Route("/_sandbox/reset", reset, methods=["POST"]),
        Route("/_sandbox/calls", calls, methods=["GET"]),
        Route("/_sandbox/companies/{company_id}/connections/{connection_id}", seed_connection,
              methods=["PUT"]),
        Route("/_sandbox/companies/{company_id}/faults", set_faults, methods=["PUT"]),
    ]
    return CodatFront(Starlette(routes=routes), sandbox, api_key)
