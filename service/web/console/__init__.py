"""The ops console: server-rendered pages under /ops/console/ that answer "why did this company
not sync?" from what the workers keep in Redis. Mounted, like /ops, only when OPS_TOKEN is set.

Templates (Jinja2, autoescaped) and the one stylesheet ship inside this package; the pages load
nothing from another host and run no script, and every answer carries a Content-Security-Policy
that forbids both (service.web.headers, for all of /ops).

The modules: `views` (the guard and rendering every page goes through), one per area
(`overview`, `companies`, `deliveries`, `dead_letters`, `session`), `forms`, `filters` (how the
templates show values), `chart` and `explain`. Access is service.web.auth's, shared with /ops."""

from __future__ import annotations

from starlette.responses import RedirectResponse
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.staticfiles import StaticFiles

from service.web.auth import OpsAuth
from service.web.console import companies, dead_letters, deliveries, overview, session
from service.web.console.filters import BASE, HERE
from service.web.console.views import Console
from service.web.deps import WebDeps


def console_routes(deps: WebDeps, auth: OpsAuth) -> list[BaseRoute]:
    console = Console(deps, auth)
    areas = (overview, session, companies, deliveries, dead_letters)
    pages = Router(
        routes=[
            *(route for area in areas for route in area.routes(console)),
            Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
        ]
    )

    async def to_console(request: object) -> RedirectResponse:
        return RedirectResponse(BASE + "/", 303)

    return [Route("/ops/", to_console, methods=["GET"]), Mount(BASE, app=pages)]
