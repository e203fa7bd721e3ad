"""The ops console: server-rendered pages under /ops/console/ that answer "why did this company
not sync?" from what the workers keep in Redis. Mounted, like /ops, only when OPS_TOKEN is set.

Templates (Jinja2, autoescaped) and the one stylesheet ship inside this package; the pages load
nothing from another host and run no script, and every answer carries a Content-Security-Policy
that forbids both (service.web.headers, for all of /ops)."""

from __future__ import annotations

from redis.asyncio import Redis
from starlette.responses import RedirectResponse
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.staticfiles import StaticFiles

from service.core.config import Settings
from service.web.console.views import BASE, HERE, Console
from service.web.guessing import WrongGuesses


def console_routes(settings: Settings, redis: Redis, guesses: WrongGuesses) -> list[BaseRoute]:
    """`guesses`: the pace of wrong credentials, shared with the /ops bearer routes."""
    console = Console(settings, redis, guesses)
    pages = Router(
        routes=[*console.routes(), Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static")]
    )

    async def to_console(request: object) -> RedirectResponse:
        return RedirectResponse(BASE + "/", 303)

    return [Route("/ops/", to_console, methods=["GET"]), Mount(BASE, app=pages)]
