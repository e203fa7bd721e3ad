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
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandbox import inputs
from sandbox.control import control_routes
from sandbox.inputs import Invalid
from sandbox.lifecycle import Lifecycle
from sandbox.sender import Sender
from sandbox.state import CLIENT_ID, Behaviour, Company, Sandbox, sync_settings

DEV_API_KEY = "sandbox-dev-key"
IN_PROGRESS = b"DatasetAlreadyInProgressException"


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    body = {
        "statusCode": status,
        "service": "PublicApi",
        "error": message,
        "correlationId": uuid.uuid4().hex,
        "canBeRetried": "Unknown",
        "detailedErrorCode": 0,
    }
    return JSONResponse(body, status, headers or None)


def _paged(request: Request, items: list[Any]) -> JSONResponse:
    query = dict(request.query_params)
    page, size = inputs.paging(query)
    return JSONResponse(
        {
            "results": items[(page - 1) * size : page * size],
            "pageNumber": page,
            "pageSize": size,
            "totalResults": len(items),
            "_links": inputs.links(request.url.path, query, page, size, len(items)),
        }
    )


async def _invalid(request: Request, exc: Exception) -> Response:
    return _error(400, str(exc))


Endpoint = Callable[[Request], Awaitable[Response]]


def _route(path: str, **by_method: Endpoint) -> Route:
    """One route per path with every method it has, so that a 405 lists them all in `Allow`
    (one Route per method would make Starlette name only the first route's)."""

    async def dispatch(request: Request) -> Response:
        return await by_method["GET" if request.method == "HEAD" else request.method](request)

    return Route(path, dispatch, methods=list(by_method))


class CodatFront:
    """Authorization, the call log, Codat's rate limits and the faults, in front of every Codat
    API route."""

    def __init__(self, app: ASGIApp, sandbox: Sandbox, api_key: str) -> None:
        self.app = app
        self.sandbox = sandbox
        self.expected = f"Basic {base64.b64encode(api_key.encode()).decode()}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(("/companies", "/webhooks", "/profile")):
            return await self.app(scope, receive, send)
        path = scope["path"]
        parts = path.split("/")
        company_id = parts[2] if len(parts) > 2 and parts[1] == "companies" else None
        given = dict(scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(given, self.expected):
            return await _error(401, "Unauthorized")(scope, receive, send)
        sandbox, behaviour = self.sandbox, self.sandbox.behaviour
        call = sandbox.record(scope["method"], path, scope.get("query_string", b"").decode(), company_id)
        in_flight = sandbox.in_flight.get(company_id or "", 0) + 1
        call["inFlight"] = in_flight
        sandbox.quota_used += 1
        # Every answer carries the quota headers (https://docs.codat.io/using-the-api/rate-limits,
        # "Rate limit headers"); past the quota or the company's 10 concurrent requests, a 429 with
        # Retry-After ("Codat rate limits").
        limits = _rate_limit_headers(behaviour.daily_quota, sandbox.quota_used)
        if sandbox.quota_used > behaviour.daily_quota:
            call["status"] = 429
            return await _error(429, "Daily quota exceeded", **limits, **{"Retry-After": "3600"})(scope, receive, send)
        if company_id and in_flight > behaviour.company_concurrency:
            call["status"] = 429
            message = f"More than {behaviour.company_concurrency} concurrent requests for this company"
            return await _error(429, message, **limits, **{"Retry-After": "1"})(scope, receive, send)
        fault = sandbox.take_fault(company_id, path)
        if fault and fault.status:
            call["status"] = fault.status
            headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
            # Echoes the credential, as some APIs' errors do, so that tests can prove the
            # service's logs mask it when it comes back in an error text.
            message = f"fault switched on in the sandbox (request had Authorization: {given.decode()})"
            return await _error(fault.status, message, **headers, **limits)(scope, receive, send)
        held: list[Message] = []

        async def hold(message: Message) -> None:
            if message["type"] == "http.response.start":
                call["status"] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), *_raw(limits)]}
            elif message["type"] == "http.response.body" and IN_PROGRESS in message.get("body", b""):
                call["inProgress"] = True  # for a test's count: this call queued nothing
            held.append(message)

        if company_id:
            sandbox.in_flight[company_id] = in_flight
        try:
            await self.app(scope, receive, hold)
            if fault and fault.delay:
                # A slow answer: the work is done at once, the reply comes late (a call in flight).
                await asyncio.sleep(fault.delay)
        finally:
            if company_id:
                sandbox.in_flight[company_id] -= 1
        for message in held:
            await send(message)


def _rate_limit_headers(quota: int, used: int) -> dict[str, str]:
    tomorrow = (datetime.now(tz=UTC) + timedelta(days=1)).strftime("%Y-%m-%dT00:00:00Z")  # resets 00:00 UTC
    return {
        "X-Rate-Limit-Limit": str(quota),
        "X-Rate-Limit-Remaining": str(max(0, quota - used)),
        "X-Rate-Limit-Reset": tomorrow,
    }


def _raw(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode(), value.encode()) for name, value in headers.items()]


def create_app(
    sandbox: Sandbox | None = None,
    *,
    api_key: str | None = None,
    webhook_secret: str | None = None,
    webhook_url: str | None = None,
    allow_any_host: bool | None = None,
    public_url: str = "http://127.0.0.1:8400",
    time_scale: float | None = None,
    pull_step_seconds: float | None = None,
) -> ASGIApp:
    """Settings default to the environment: SANDBOX_API_KEY, SANDBOX_WEBHOOK_SECRET (signs what
    is sent), SANDBOX_WEBHOOK_URL (a consumer registered at start), SANDBOX_TIME_SCALE (delivery
    retry schedule), SANDBOX_PULL_STEP_SECONDS (time per dataset status), SANDBOX_ALLOW_ANY_HOST
    (1: deliver to consumers beyond loopback), SANDBOX_FETCH_ON_FIRST_LINK (a comma list: the data
    types whose Fetch on first link is on in the client's sync settings; unset: Codat's default,
    sandbox.state; empty: none), SANDBOX_IN_PROGRESS_STATUS (400 or 409: the status of
    DatasetAlreadyInProgressException), SANDBOX_COMPANY_CONCURRENCY (10), SANDBOX_DAILY_QUOTA."""
    sandbox = sandbox or Sandbox(behaviour_from_env())
    api_key = api_key or os.environ.get("SANDBOX_API_KEY", DEV_API_KEY)
    # A comma list (as in CODAT_WEBHOOK_SECRETS) signs with the first.
    secret = (webhook_secret or os.environ.get("SANDBOX_WEBHOOK_SECRET") or "").split(",")[0] or None
    if allow_any_host is None:
        allow_any_host = os.environ.get("SANDBOX_ALLOW_ANY_HOST", "") == "1"
    sender = Sender(
        secret,
        time_scale if time_scale is not None else float(os.environ.get("SANDBOX_TIME_SCALE", "0.01")),
        allow_any_host,
    )
    if webhook_url or os.environ.get("SANDBOX_WEBHOOK_URL"):
        sender.add_consumer(webhook_url or os.environ["SANDBOX_WEBHOOK_URL"])
    step = (
        pull_step_seconds
        if pull_step_seconds is not None
        else float(os.environ.get("SANDBOX_PULL_STEP_SECONDS", "0.2"))
    )
    lifecycle = Lifecycle(sandbox, sender, public_url, step)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await sender.aclose()

    routes = api_routes(sandbox, lifecycle) + control_routes(sandbox, lifecycle)
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={Invalid: _invalid})
    return CodatFront(app, sandbox, api_key)


def behaviour_from_env() -> Behaviour:
    behaviour = Behaviour()
    fetch = os.environ.get("SANDBOX_FETCH_ON_FIRST_LINK")
    if fetch is not None:
        behaviour.fetch_on_first_link = tuple(t.strip() for t in fetch.split(",") if t.strip())
    status = int(os.environ.get("SANDBOX_IN_PROGRESS_STATUS", "400"))
    if status not in (400, 409):
        raise ValueError(f"SANDBOX_IN_PROGRESS_STATUS must be 400 or 409, not {status}")
    behaviour.in_progress_status = status
    behaviour.company_concurrency = int(os.environ.get("SANDBOX_COMPANY_CONCURRENCY", "10"))
    behaviour.daily_quota = int(os.environ.get("SANDBOX_DAILY_QUOTA", str(behaviour.daily_quota)))
    return behaviour


def already_in_progress(sandbox: Sandbox, company: Company, data_type: str, pull: dict[str, Any]) -> JSONResponse:
    """Codat's answer to queueing a data type that is being pulled ("Multiple dataset queued
    exception", https://docs.codat.io/using-the-api/queueing-data-syncs); the status is
    undocumented (sandbox.state.Behaviour)."""
    return _error(
        sandbox.behaviour.in_progress_status,
        f"DatasetAlreadyInProgressException: Cannot queue {data_type} sync for {company.id} "
        f"as previous sync {pull['id']} is still in progress",
    )


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
        name, description, platform_type, tags = inputs.company(await _json(request))
        return JSONResponse(lifecycle.create_company(name, description, platform_type, tags).as_json(base))

    async def list_companies(request: Request) -> Response:
        return _paged(request, [c.as_json(base) for c in sandbox.companies.values()])

    async def get_company(request: Request) -> Response:
        company = company_of(request)
        return JSONResponse(company.as_json(base)) if company else _error(404, "company not found")

    async def delete_company(request: Request) -> Response:
        company = company_of(request)
        if company is None:
            return _error(404, "company not found")
        lifecycle.delete_company(company)
        return Response(status_code=204)

    async def list_connections(request: Request) -> Response:
        company = company_of(request)
        if company is None:
            return _error(404, "company not found")
        return _paged(request, list(company.connections.values()))

    async def create_connection(request: Request) -> Response:
        company = company_of(request)
        if company is None:
            return _error(404, "company not found")
        return JSONResponse(lifecycle.create_connection(company, inputs.platform_key(await _json(request))))

    async def get_connection(request: Request) -> Response:
        result = found(request)
        return result if isinstance(result, JSONResponse) else JSONResponse(result[1])

    async def unlink(request: Request) -> Response:
        result = found(request)
        if isinstance(result, JSONResponse):
            return result
        company, connection = result
        inputs.unlink(await _json(request))
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
        result[1]["connectionInfo"] = inputs.authorization(await _json(request))
        return JSONResponse(result[1])

    def linked(company: Company) -> list[dict[str, Any]]:
        return [c for c in company.connections.values() if c["status"] == "Linked"]

    async def refresh_all(request: Request) -> Response:
        # "Will queue a dataset for each of the data types marked as Fetch on first link ...,
        # where that data type is supported by the company's linked data connections"
        # (https://docs.codat.io/using-the-api/queueing-data-syncs, "Refresh data"). A type
        # already being pulled is left as it is; when every one is, Codat's exception (the docs
        # do not say what data/all answers when only some are: it queues the rest, 204).
        company = company_of(request)
        if company is None:
            return _error(404, "company not found")
        if not linked(company):
            return _error(400, "company has no linked connection")
        wanted = sandbox.fetch_on_first_link(company)
        running = {t: pull for t in wanted if (pull := sandbox.in_progress(company, t))}
        if running and len(running) == len(wanted):
            data_type, pull = next(iter(running.items()))
            return already_in_progress(sandbox, company, data_type, pull)
        for connection in linked(company):
            lifecycle.queue_pulls(company, connection["id"], [t for t in wanted if t not in running])
        return Response(status_code=204)

    async def refresh_data_type(request: Request) -> Response:
        company = company_of(request)
        if company is None:
            return _error(404, "company not found")
        data_type = inputs.data_type(request.path_params["data_type"])
        wanted = inputs.uuid_or_none(request.query_params.get("connectionId"), "connectionId")
        if wanted is None:
            # Without connectionId Codat queues the pull on the company's accounting connection.
            choices = sorted(linked(company), key=lambda c: c["sourceType"] != "Accounting")
            if not choices:
                return _error(400, "company has no linked connection")
            connection = choices[0]
        else:
            connection = company.connections.get(wanted)
            if connection is None:
                return _error(404, "connection not found")
            if connection["status"] != "Linked":
                return _error(400, f"connection is {connection['status']}")
        running = sandbox.in_progress(company, data_type)
        if running is not None:
            return already_in_progress(sandbox, company, data_type, running)
        [pull] = lifecycle.queue_pulls(company, connection["id"], [data_type])
        return JSONResponse(pull)

    async def client_sync_settings(request: Request) -> Response:
        if request.method == "GET":
            overrides = sandbox.client_settings != sync_settings(sandbox.started_with.fetch_on_first_link)
            body = {"clientId": CLIENT_ID, "settings": list(sandbox.client_settings.values())}
            return JSONResponse({**body, "overridesDefaults": overrides})
        sandbox.client_settings = inputs.sync_settings(await _json(request))
        return Response(status_code=204)

    async def company_sync_settings(request: Request) -> Response:
        # The docs do not say what a company without settings of its own answers: here the
        # client's, with overridesDefaults false (the service reads the client's as a fallback).
        company = company_of(request)
        if company is None:
            return _error(404, "company not found")
        if request.method == "GET":
            body = {"companyId": company.id, "settings": list(sandbox.settings_of(company).values())}
            return JSONResponse({**body, "overridesDefaults": company.sync_settings is not None})
        company.sync_settings = inputs.sync_settings(await _json(request))
        return Response(status_code=204)

    async def data_status(request: Request) -> Response:
        company = company_of(request)
        if company is None:
            return _error(404, "company not found")
        latest: dict[str, Any] = {}
        for pull in company.pulls:
            status = {"dataType": pull["dataType"], "currentStatus": pull["status"], "latestSyncId": pull["id"]}
            previous = latest.get(pull["dataType"], {})
            if pull["status"] == "Complete":
                status.update(
                    lastSuccessfulSync=pull.get("completed", pull["requested"]), latestSuccessfulSyncId=pull["id"]
                )
            elif "latestSuccessfulSyncId" in previous:
                status.update({key: previous[key] for key in ("lastSuccessfulSync", "latestSuccessfulSyncId")})
            latest[pull["dataType"]] = status
        return JSONResponse(latest)

    async def history(request: Request) -> Response:
        company = company_of(request)
        if company is None:
            return _error(404, "company not found")
        return _paged(request, sorted(company.pulls, key=lambda p: p["requested"], reverse=True))

    async def pull_operation(request: Request) -> Response:
        company = company_of(request)
        wanted = request.path_params["dataset_id"]
        pull = next((p for p in company.pulls if p["id"] == wanted), None) if company else None
        return JSONResponse(pull) if pull else _error(404, "pull operation not found")

    async def create_consumer(request: Request) -> Response:
        sender = lifecycle.sender
        url, event_types, disabled, tags = inputs.consumer(
            await _json(request), sender.allow_any_host, len(sender.consumers)
        )
        return JSONResponse(sender.add_consumer(url, event_types, disabled, tags), 201)

    async def list_consumers(request: Request) -> Response:
        return JSONResponse({"results": list(lifecycle.sender.consumers.values())})

    async def delete_consumer(request: Request) -> Response:
        if lifecycle.sender.consumers.pop(request.path_params["consumer_id"], None) is None:
            return _error(404, "consumer not found")
        return Response(status_code=204)

    company_path = "/companies/{company_id}"
    connection_path = company_path + "/connections/{connection_id}"
    return [
        _route("/companies", GET=list_companies, POST=create_company),
        _route(company_path, GET=get_company, DELETE=delete_company),
        _route(company_path + "/connections", GET=list_connections, POST=create_connection),
        _route(connection_path, GET=get_connection, PATCH=unlink, DELETE=delete_connection),
        _route(connection_path + "/authorization", PUT=update_authorization),
        _route(company_path + "/syncSettings", GET=company_sync_settings, POST=company_sync_settings),
        _route("/profile/syncSettings", GET=client_sync_settings, POST=client_sync_settings),
        _route(company_path + "/data/all", POST=refresh_all),
        _route(company_path + "/data/queue/{data_type}", POST=refresh_data_type),
        _route(company_path + "/dataStatus", GET=data_status),
        _route(company_path + "/data/history", GET=history),
        _route(company_path + "/data/history/{dataset_id}", GET=pull_operation),
        _route("/webhooks", GET=list_consumers, POST=create_consumer),
        _route("/webhooks/{consumer_id}", DELETE=delete_consumer),
    ]


async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        return None
