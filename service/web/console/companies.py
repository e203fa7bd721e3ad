"""Companies: a search by id or name, and one company's page (its connections, each with its
state and history, its syncs, its dead letters and its lifecycle events)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.web.console.filters import company_href
from service.web.console.forms import page_number
from service.web.console.views import Console

COMPANIES_SHOWN = 50
CONNECTIONS_PER_PAGE = 20  # a company's connections, each with its history table, a page at a time
COMPANY_LETTERS_SHOWN = 100  # a company's newest dead letters; the page says how many it has


def routes(console: Console) -> list[Route]:
    deps = console.deps

    async def states(connection_ids: list[str]) -> list[dict[str, Any]]:
        found = await asyncio.gather(*(deps.connections.get(c) for c in connection_ids))
        return [s for s in found if s is not None]

    async def companies(request: Request) -> Response:
        query = request.query_params.get("q", "").strip()
        found = await deps.history.search_companies(query, COMPANIES_SHOWN + 1)
        shown = found[:COMPANIES_SHOWN]
        ids = await asyncio.gather(*(deps.history.connections_of(c["companyId"]) for c in shown))
        found_states = await asyncio.gather(*(states(list(i)) for i in ids))
        rows = []
        for company, connections in zip(shown, found_states, strict=True):
            counts = Counter(s.get("status") or "unknown" for s in connections)
            rows.append({**company, "connections": len(connections), "counts": dict(sorted(counts.items()))})
        statuses = sorted({status for row in rows for status in row["counts"]})
        context = {"nav": "companies", "q": query, "rows": rows, "statuses": statuses, "more": len(found) > len(shown)}
        return console.render(request, "companies.html", context)

    async def company(request: Request) -> Response:
        company_id = request.path_params.get("company_id") or request.query_params.get("id", "")
        page = page_number(request.query_params.get("page"))
        name = await deps.history.company_name(company_id)
        all_ids = await deps.history.connections_of(company_id)
        pages = max(1, -(-len(all_ids) // CONNECTIONS_PER_PAGE))
        page = min(page, pages)
        # One page of connections, each with its history: a company with 500 connections costs
        # what one with 20 does, and the page says how many there are.
        connection_ids = all_ids[(page - 1) * CONNECTIONS_PER_PAGE : page * CONNECTIONS_PER_PAGE]
        current_states = {s["connectionId"]: s for s in await states(connection_ids)}
        histories = await asyncio.gather(*(deps.history.connection_history(c) for c in connection_ids))
        syncs = await deps.syncs.get(company_id)
        letters, letters_total = await deps.dead_letters.for_company(company_id, COMPANY_LETTERS_SHOWN)
        lifecycle = await deps.lifecycle.recent(20, company_id=company_id)
        connections = []
        for connection_id, history in zip(connection_ids, histories, strict=True):
            current = current_states.get(connection_id) or {"connectionId": connection_id}
            claimed_at = None
            if current.get("initialSync") == "claimed":
                claimed_at = await deps.connections.claimed_at(connection_id)
            applied = next((h for h in history if h.get("outcome") == "applied"), None)
            connections.append(
                {
                    **current,
                    "source": current.get("lastEventType"),
                    "askedCodat": bool(applied and applied.get("authoritative")),
                    "claimedAt": claimed_at,
                    "history": history,
                }
            )
        known = bool(name or all_ids or syncs or letters_total)
        context = {
            "nav": "companies",
            "company_id": company_id,
            "self_href": company_href(company_id),
            "name": name,
            "connections": connections,
            "connections_total": len(all_ids),
            "page": page,
            "pages": pages,
            "first_shown": (page - 1) * CONNECTIONS_PER_PAGE + 1,
            "syncs": dict(sorted(syncs.items())),
            "letters": letters,
            "letters_total": letters_total,
            "lifecycle": lifecycle,
            "known": known,
        }
        return console.render(request, "company.html", context, 200 if known else 404)

    page = console.page
    return [
        Route("/companies", page(companies), methods=["GET"]),
        Route("/companies/{company_id:path}", page(company), methods=["GET"]),
        Route("/company", page(company), methods=["GET"]),  # ?id=, for ids a path cannot carry
    ]
