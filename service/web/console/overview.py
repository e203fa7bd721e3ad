"""The overview: is the service taking deliveries, are the workers keeping up, what did the last
hour look like, and is Codat delivering at all (issue 23's cards and gaps)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.stores import activity, delivery_health
from service.web.console import chart
from service.web.console.views import Console

GAPS_SHOWN = 20  # the newest delivery gaps on the overview (`codat-webhooks gaps` lists more)


def routes(console: Console) -> list[Route]:
    deps = console.deps
    silence_ms = deps.settings.silence_alert_seconds * 1000

    async def overview(request: Request) -> Response:
        state = await activity.service_state(deps.redis)
        last, running = await deps.reconciles.last(), await deps.reconciles.current()
        series = await activity.last_hour(deps.redis)
        health = await delivery_health.snapshot(deps.redis, silence_ms)
        context = {
            "nav": "overview",
            "health": health,
            "gaps": await deps.gaps.list(GAPS_SHOWN),
            "state": state,
            "reconcile_last": last,
            "reconcile_running": running,
            "chart": chart.draw(series),
            "refresh": True,
        }
        return console.render(request, "overview.html", context)

    return [Route("/", console.page(overview), methods=["GET"])]
