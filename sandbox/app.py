"""A local Codat API for development and tests, as Codat-Platform.json defines the parts the
service and the seeds' quick-start use. Everything is in memory. Changes send Codat's events to
the registered consumers (sandbox.lifecycle, sandbox.sender); `/_sandbox/*` (sandbox.control)
lets a test or a developer play the SMB's part, switch faults on, and read back every call.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandbox.control import control_routes
from sandbox.lifecycle import Lifecycle
from sandbox.sender import Sender
from sandbox.state import DEFAULT_DATA_TYPES, Company, Sandbox

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
    """Authorization, the call log and the faults, in front of every Codat API route."""

    def __init__(self, app: ASGIApp, sandbox: Sandbox, api_key: str) -> None:
        self.app = app
        self.sandbox = sandbox
        self.expected = f"Basic {base64.b64encode(api_key.encode()).decode()}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(("/companies", "/webhooks")):
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
            # Echoes the credential, as some APIs' errors do, so that tests can prove the
            # service's logs mask it when it comes back in an error text.
            message = f"fault switched on in the sandbox (request had Authorization: {given.decode()})"
            return await _error(fault.status, message, **headers)(scope, receive, send)
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


def create_app(
    sandbox: Sandbox | None = None,
    *,
    api_key: str | None = None,
    webhook_secret: str | None = None,
    webhook_url: str | None = None,
    public_url: str = "http://127.0.0.1:8400",
    time_scale: float | None = None,
    pull_step_seconds: float | None = None,
) -> ASGIApp:
    """Settings default to the environment: SANDBOX_API_KEY, SANDBOX_WEBHOOK_SECRET (signs what
    is sent), SANDBOX_WEBHOOK_URL (a consumer registered at start), SANDBOX_TIME_SCALE (delivery
    retry schedule), SANDBOX_PULL_STEP_SECONDS (time per dataset status)."""
    sandbox = sandbox or Sandbox()
    api_key = api_key or os.environ.get("SANDBOX_API_KEY", DEV_API_KEY)
    # A comma list (as in CODAT_WEBHOOK_SECRETS) signs with the first.
    secret = (webhook_secret or os.environ.get("SANDBOX_WEBHOOK_SECRET") or "").split(",")[0] or None
    sender = Sender(secret,
                    time_scale if time_scale is not None else float(os.environ.get("SANDBOX_TIME_SCALE", "0.01")))
    if webhook_url or os.environ.get("SANDBOX_WEBHOOK_URL"):
        sender.add_consumer(webhook_url or os.environ["SANDBOX_WEBHOOK_URL"])
    step = pull_step_seconds if pull_step_seconds is not None else float(
        os.environ.get("SANDBOX_PULL_STEP_SECONDS", "0.2"))
    lifecycle = Lifecycle(sandbox, sender, public_url, step)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await sender.aclose()

    routes = api_routes(sandbox, lifecycle) + control_routes(sandbox, lifecycle)
    return CodatFront(Starlette(routes=routes, lifespan=lifespan), sandbox, api_key)


def api_routes(sandbox: Sandbox, lifecycle: Lifecycle) -> list[Route]:
    """Codat's API, as far as Codat-Platform.json defines what the service and the seeds use."""
    base = lifecycle.link_base

    def company_of(request: Request) -> Company | None:
        return sandbox.companies.get(request.path_params["company_id"])

    def found(request: Request) -> tuple[Company, dict[str, Any]] | JSONResponse:
        company = company_of(request)
        connection = company.connections.get(request.path_params["connection_id"]) if company else None
        if company is None or connection is None:
            return _error(404, "connection not found")
        return company, connection

    async def create_company(request: Request) -> Response:
        body = await _json(request)
        if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not body["name"].strip():
            return _error(400, "name is required")
        company = lifecycle.create_company(body["name"], body.get("description"), body.get("platformType"))
        return JSONResponse(company.as_json(base))

    async def list_companies(request: Request) -> Response:
        return JSONResponse(_page(request, [c.as_json(base) for c in sandbox.companies.values()]))

    async def get_company(request: Request) -> Response:
        company = company_of(request)
        return JSONResponse(company.as_json(base)) if company else _error(404, "company not found")

    async def list_connections(request: Request) -> Response:
        company = company_of(request)
        if company is None:
            return _error(404, "company not found")
        return JSONResponse(_page(request, list(company.connections.values())))

    async def create_connection(request: Request) -> Response:
        company = company_of(request)
        if company is None:
            return _error(404, "company not found")
        body = await _json(request)
        platform_key = body.get("platformKey") if isinstance(body, dict) else None
        if not isinstance(platform_key, str) or len(platform_key) != 4:
            return _error(400, "platformKey (four letters) is required")
        return JSONResponse(lifecycle.create_connection(company, platform_key))

    async def get_connection(request: Request) -> Response:
        result = found(request)
        return result if isinstance(result, JSONResponse) else JSONResponse(result[1])

    async def unlink(request: Request) -> Response:
        result = found(request)
        if isinstance(result, JSONResponse):
            return result
        company, connection = result
        body = await _json(request)
        if not isinstance(body, dict) or body.get("status") != "Unlinked":
            return _error(400, 'the only change is {"status": "Unlinked"}')
        if connection["status"] != "Linked":
            return _error(400, "only Linked connections can be unlinked")
        return JSONResponse(lifecycle.disconnect(company, connection, "Unlinked"))

    async def delete_connection(request: Request) -> Response:
        result = found(request)
        if isinstance(result, JSONResponse):
            return result
        lifecycle.delete(result[0], result[1]["id"])
        return Response(status_code=200)

    async def update_authorization(request: Request) -> Response:
        result = found(request)
        if isinstance(result, JSONResponse):
            return result
        body = await _json(request)
        result[1]["connectionInfo"] = body if isinstance(body, dict) else {}
        return JSONResponse(result[1])

    async def refresh_all(request: Request) -> Response:
        company = company_of(request)
        if company is None:
            return _error(404, "company not found")
        linked = [c for c in company.connections.values() if c["status"] == "Linked"]
        if not linked:
            return _error(400, "company has no linked connection")
        for connection in linked:
            lifecycle.queue_pulls(company, connection["id"], list(DEFAULT_DATA_TYPES))
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
        [pull] = lifecycle.queue_pulls(company, connection["id"], [request.path_params["data_type"]])
        return JSONResponse(pull)

    async def data_status(request: Request) -> Response:
        company = company_of(request)
        if company is None:
            return _error(404, "company not found")
        latest: dict[str, Any] = {}
        for pull in company.pulls:
            done = pull["status"] == "Complete"
            previous = latest.get(pull["dataType"], {})
            latest[pull["dataType"]] = {
                "dataType": pull["dataType"], "currentStatus": pull["status"], "latestSyncId": pull["id"],
                "lastSuccessfulSync": pull.get("completed") if done else previous.get("lastSuccessfulSync"),
                "latestSuccessfulSyncId": pull["id"] if done else previous.get("latestSuccessfulSyncId"),
            }
        return JSONResponse(latest)

    async def history(request: Request) -> Response:
        company = company_of(request)
        if company is None:
            return _error(404, "company not found")
        return JSONResponse(_page(request, sorted(company.pulls, key=lambda p: p["requested"], reverse=True)))

    async def create_consumer(request: Request) -> Response:
        body = await _json(request)
        if not isinstance(body, dict) or not isinstance(body.get("url"), str):
            return _error(400, "url is required")
        event_types = body.get("eventTypes") if isinstance(body.get("eventTypes"), list) else None
        return JSONResponse(lifecycle.sender.add_consumer(body["url"], event_types, bool(body.get("disabled"))))

    async def list_consumers(request: Request) -> Response:
        return JSONResponse({"results": list(lifecycle.sender.consumers.values())})

    async def delete_consumer(request: Request) -> Response:
        if lifecycle.sender.consumers.pop(request.path_params["consumer_id"], None) is None:
            return _error(404, "consumer not found")
        return Response(status_code=204)

    connection_path = "/companies/{company_id}/connections/{connection_id}"
    return [
        Route("/companies", create_company, methods=["POST"]),
        Route("/companies", list_companies, methods=["GET"]),
        Route("/companies/{company_id}", get_company, methods=["GET"]),
        Route("/companies/{company_id}/connections", list_connections, methods=["GET"]),
        Route("/companies/{company_id}/connections", create_connection, methods=["POST"]),
        Route(connection_path, get_connection, methods=["GET"]),
        Route(connection_path, unlink, methods=["PATCH"]),
        Route(connection_path, delete_connection, methods=["DELETE"]),
        Route(connection_path + "/authorization", update_authorization, methods=["PUT"]),
        Route("/companies/{company_id}/data/all", refresh_all, methods=["POST"]),
        Route("/companies/{company_id}/data/queue/{data_type}", refresh_data_type, methods=["POST"]),
        Route("/companies/{company_id}/dataStatus", data_status, methods=["GET"]),
        Route("/companies/{company_id}/data/history", history, methods=["GET"]),
        Route("/webhooks", create_consumer, methods=["POST"]),
        Route("/webhooks", list_consumers, methods=["GET"]),
        Route("/webhooks/{consumer_id}", delete_consumer, methods=["DELETE"]),
    ]


async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        return None
