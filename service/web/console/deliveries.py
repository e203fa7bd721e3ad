"""One delivery, by its webhook id or a prefix of it: what its job did, whether it is still in
flight, the state changes it made, and its dead letters."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.stores import activity
from service.web.console.views import Console

DELIVERY_LETTERS_SHOWN = 100
MIN_PREFIX = 6  # shortest webhook id prefix looked up (the console log prints 8 characters)
PREFIX_MATCHES = 10
PREFIX_SCAN_COUNT = 1000
PREFIX_SCAN_CALLS = 50  # so at most ~50,000 keys looked at for one prefix lookup


def routes(console: Console) -> list[Route]:
    deps = console.deps

    async def resolve(given: str) -> tuple[str, list[str], bool]:
        """The webhook id `given` names: itself when the service knows it, else the one id it is
        a unique prefix of (the console log prints ids cut to 8 characters). Also the ids it is
        a prefix of, when there are several, and whether the search stopped before the end.

        Dead letters are found through their index (a lexical range, no scan); delivery traces
        by a SCAN of their keys, bounded to PREFIX_SCAN_CALLS calls: on a Redis with millions of
        keys the page says when it did not look everywhere."""
        if await deps.history.delivery_known(given):
            return given, [], False
        if len(given) < MIN_PREFIX:
            return given, [], False
        lettered = await deps.dead_letters.webhook_ids(given, PREFIX_MATCHES)
        found, partial = await deps.history.traced_deliveries(
            given, PREFIX_MATCHES, scan_count=PREFIX_SCAN_COUNT, scan_calls=PREFIX_SCAN_CALLS, found=tuple(lettered)
        )
        if len(found) == 1 and not partial:
            return found[0], [], False
        return given, found[:PREFIX_MATCHES], partial

    async def delivery(request: Request) -> Response:
        given = request.query_params.get("id", "").strip()
        context: dict[str, Any] = {"nav": "deliveries", "webhook_id": given, "given": given, "trace": None}
        if not given:
            return console.render(request, "delivery.html", context)
        webhook_id, candidates, partial = await resolve(given)
        context.update(webhook_id=webhook_id, candidates=candidates, partial=partial)
        trace = await deps.history.delivery(webhook_id)
        flight = await activity.delivery_in_flight(deps.redis, webhook_id)
        letters = await deps.dead_letters.for_webhook(webhook_id, DELIVERY_LETTERS_SHOWN)
        changes: list[dict[str, Any]] = []
        connection_state = None
        if trace and trace.get("connectionId"):
            history = await deps.history.connection_history(trace["connectionId"])
            changes = [h for h in history if h.get("webhookId") == webhook_id]
            connection_state = await deps.connections.get(trace["connectionId"])
        known = bool(trace or flight["seen"] or flight["job"] or letters)
        context.update(
            trace=trace,
            flight=flight,
            letters=letters,
            changes=changes,
            connection_state=connection_state,
            known=known,
        )
        return console.render(request, "delivery.html", context, 200 if known else 404)

    return [Route("/deliveries", console.page(delivery), methods=["GET"])]
