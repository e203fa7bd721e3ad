"""The sandbox's own routes, which Codat does not have: they play the SMB's part (finishing Link,
revoking access) and let tests seed state, switch faults on and read back what happened.

- GET/POST /link/{companyId}: the page a company's `redirect` points at; its button finishes Link
- POST /_sandbox/companies/{id}/link: the same, for scripts ({"platformKey": "mqjo"} optional)
- POST /_sandbox/companies/{id}/connections/{id}/deauthorize | relink
- PUT /_sandbox/companies/{id}/connections/{id}: seed a connection in a status (no events);
  {"status", "created", "pulls": [dataType, ...]} (pulls completed when it was created),
  "firstLink": true (Linked just now: Codat's Fetch-on-first-link pulls start, as on a Link);
  "Deleted": the company only, without that connection
- PUT /_sandbox/fetch-on-first-link: {"dataTypes": [...]}: the client's sync settings with Fetch on
  first link on for exactly those (a first link queues them by itself; data/all queues them)
- PUT /_sandbox/behaviour: {inProgressStatus: 400|409, companyConcurrency, dailyQuota}: how Codat
  answers where its docs are silent, and its limits (sandbox.state.Behaviour)
- PUT /_sandbox/companies/{id}/faults: [{status, retryAfter, delay, times, match}]; id `*`: any call
- PUT /_sandbox/chaos: {rate, seed, statuses, retryAfter, delay}: random faults on every company's
  Codat API calls (never on these routes); {"rate": 0} switches them off
- PUT /_sandbox/companies/{id}/pull-outcomes: {"invoices": "FetchError"}: how pulls end
- GET /_sandbox/calls (each with `inFlight`: the company's requests being answered as it came),
  GET /_sandbox/deliveries (each attempt; a message given up after the
  schedule's last attempt, and a consumer disabled after 5 days of failures, are recorded too),
  POST /_sandbox/reset
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from sandbox.state import Chaos, Fault, Sandbox

if TYPE_CHECKING:
    from sandbox.lifecycle import Lifecycle

_PAGE = """<!doctype html><title>Codat sandbox Link</title>
<h1>{name}</h1><p>{message}</p>
<form method="post"><button type="submit">Connect to the Codat Sandbox</button></form>"""


def control_routes(sandbox: Sandbox, lifecycle: Lifecycle) -> list[Route]:
    def missing(what: str) -> JSONResponse:
        return JSONResponse({"error": f"{what} not found"}, 404)

    async def link_page(request: Request) -> Response:
        company = sandbox.companies.get(request.path_params["company_id"])
        if company is None:
            return HTMLResponse("<h1>Unknown company</h1>", 404)
        message = "Share your accounting data from the Sandbox platform."
        if request.method == "POST":
            connection = lifecycle.link(company)
            message = f"Linked: connection {html.escape(connection['id'])} is {connection['status']}."
        return HTMLResponse(_PAGE.format(name=html.escape(company.name), message=message))

    async def link(request: Request) -> Response:
        company = sandbox.companies.get(request.path_params["company_id"])
        if company is None:
            return missing("company")
        body = await request.body()
        platform_key = "mqjo"
        if body:
            platform_key = (await request.json()).get("platformKey", platform_key)
        return JSONResponse(lifecycle.link(company, platform_key))

    async def change(request: Request) -> Response:
        company = sandbox.companies.get(request.path_params["company_id"])
        connection = company.connections.get(request.path_params["connection_id"]) if company else None
        if company is None or connection is None:
            return missing("connection")
        if request.path_params["action"] == "deauthorize":
            return JSONResponse(lifecycle.disconnect(company, connection, "Deauthorized"))
        if request.path_params["action"] == "relink":
            return JSONResponse(lifecycle.authorize(company, connection))
        return missing("action")

    async def seed_connection(request: Request) -> Response:
        body = await request.json()
        company_id = request.path_params["company_id"]
        company = sandbox.companies.get(company_id) or sandbox.add_company(
            f"Company {company_id[:8]}", company_id=company_id
        )
        if body.get("status") == "Deleted":  # the company, without that connection
            company.connections.pop(request.path_params["connection_id"], None)
            return JSONResponse({})
        connection = sandbox.put_connection(
            company, request.path_params["connection_id"], body.get("status", "Linked"), link_base=lifecycle.link_base
        )
        if isinstance(body.get("created"), str):
            connection["created"] = body["created"]
        if body.get("firstLink") and connection["status"] == "Linked":
            # As a Link would: Codat's own Fetch-on-first-link pulls start (sandbox.lifecycle).
            wanted = sandbox.fetch_on_first_link(company)
            lifecycle.queue_pulls(company, connection["id"], [t for t in wanted if not sandbox.in_progress(company, t)])
        # Pulls done long ago (a connection synced before the service was deployed): complete.
        for data_type in body.get("pulls") or []:
            pull = sandbox.queue_pull(company, connection["id"], str(data_type), requested=connection["created"])
            pull.update(status="Complete", progress=100, isCompleted=True, completed=connection["created"])
        return JSONResponse(connection)

    async def set_fetch_on_first_link(request: Request) -> Response:
        body = await request.json()
        data_types = body.get("dataTypes") if isinstance(body, dict) else None
        if not isinstance(data_types, list) or not all(isinstance(t, str) for t in data_types):
            return JSONResponse({"error": "dataTypes must be a list of data types"}, 400)
        sandbox.set_fetch_on_first_link(tuple(data_types))
        return JSONResponse({"dataTypes": data_types})

    async def set_behaviour(request: Request) -> Response:
        body = await request.json()
        behaviour = sandbox.behaviour
        try:
            status = int(body.get("inProgressStatus", behaviour.in_progress_status))
            if status not in (400, 409):
                raise ValueError
            behaviour.in_progress_status = status
            behaviour.company_concurrency = int(body.get("companyConcurrency", behaviour.company_concurrency))
            behaviour.daily_quota = int(body.get("dailyQuota", behaviour.daily_quota))
        except (TypeError, ValueError, AttributeError):
            return JSONResponse({"error": "inProgressStatus (400|409), companyConcurrency, dailyQuota: numbers"}, 400)
        return JSONResponse(behaviour.as_json())

    async def set_faults(request: Request) -> Response:
        body = await request.json()
        sandbox.faults[request.path_params["company_id"]] = [
            Fault(
                status=f.get("status"),
                retry_after=f.get("retryAfter"),
                delay=f.get("delay", 0.0),
                times=f.get("times", 1),
                match=f.get("match", ""),
            )
            for f in body
        ]
        return Response(status_code=204)

    async def set_chaos(request: Request) -> Response:
        body = await request.json()
        try:
            sandbox.chaos = Chaos(
                rate=float(body.get("rate", 0.0)),
                seed=int(body.get("seed", 0)),
                statuses=tuple(int(s) for s in body.get("statuses", (429, 500, 503))),
                retry_after=float(body.get("retryAfter", 0.5)),
                delay=float(body.get("delay", 0.0)),
            )
        except (TypeError, ValueError):
            return JSONResponse({"error": "rate, seed, statuses, retryAfter and delay must be numbers"}, 400)
        return JSONResponse(sandbox.chaos.as_json())

    async def get_chaos(request: Request) -> Response:
        return JSONResponse(sandbox.chaos.as_json())

    async def set_pull_outcomes(request: Request) -> Response:
        lifecycle.pull_outcomes[request.path_params["company_id"]] = dict(await request.json())
        return Response(status_code=204)

    async def calls(request: Request) -> Response:
        company_id = request.query_params.get("companyId")
        return JSONResponse([c for c in sandbox.calls if company_id in (None, c["companyId"])])

    async def deliveries(request: Request) -> Response:
        return JSONResponse(lifecycle.sender.attempts)

    async def reset(request: Request) -> Response:
        sandbox.reset()
        lifecycle.reset()
        return Response(status_code=204)

    company = "/_sandbox/companies/{company_id}"
    return [
        Route("/link/{company_id}", link_page, methods=["GET", "POST"]),
        Route(f"{company}/link", link, methods=["POST"]),
        Route(company + "/connections/{connection_id}/{action}", change, methods=["POST"]),
        Route(company + "/connections/{connection_id}", seed_connection, methods=["PUT"]),
        Route(f"{company}/faults", set_faults, methods=["PUT"]),
        Route(f"{company}/pull-outcomes", set_pull_outcomes, methods=["PUT"]),
        Route("/_sandbox/chaos", set_chaos, methods=["PUT"]),
        Route("/_sandbox/fetch-on-first-link", set_fetch_on_first_link, methods=["PUT"]),
        Route("/_sandbox/behaviour", set_behaviour, methods=["PUT"]),
        Route("/_sandbox/chaos", get_chaos, methods=["GET"]),
        Route("/_sandbox/calls", calls, methods=["GET"]),
        Route("/_sandbox/deliveries", deliveries, methods=["GET"]),
        Route("/_sandbox/reset", reset, methods=["POST"]),
    ]
