"""The ops console: server-rendered pages under /ops/console/ that answer "why did this company
not sync?" from what the workers keep in Redis. Mounted, like /ops, only when OPS_TOKEN is set.

Templates (Jinja2, autoescaped) and the one stylesheet ship inside this package; the pages load
nothing from another host and run no script, and every answer carries a Content-Security-Policy
that forbids both."""

from __future__ import annotations

from redis.asyncio import Redis
from starlette.responses import RedirectResponse
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.config import Settings
from service.web.console.views import BASE, HERE, Console

SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        b"frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every answer of the app it wraps."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in SECURITY_HEADERS}
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message["headers"] = headers + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


def console_routes(settings: Settings, redis: Redis) -> list[BaseRoute]:
    console = Console(settings, redis)
    pages = Router(
        routes=[*console.routes(), Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static")]
    )

    async def to_console(request: object) -> RedirectResponse:
        return RedirectResponse(BASE + "/", 303)

    return [Route("/ops/", to_console, methods=["GET"]), Mount(BASE, app=SecurityHeaders(pages))]
