"""The headers every /ops answer carries, JSON or page, found or not, 2xx or 5xx: applied once,
as middleware around the whole app, so no route (nor the router's own 404) can forget them.
Other paths (the webhook, health, metrics) pass through untouched."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

OPS_PREFIX = "/ops"
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        b"frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    # same-origin, not no-referrer: under no-referrer a browser sends `Origin: null` with the
    # console's own form posts, and the console refuses posts whose Origin is not its own.
    # Nothing goes to another host either way.
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]
_NAMES = {name for name, _ in SECURITY_HEADERS}


def is_ops(path: str) -> bool:
    return path == OPS_PREFIX or path.startswith(OPS_PREFIX + "/")


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every answer under /ops (replacing any a route set itself)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_ops(scope["path"]):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _NAMES]
                message["headers"] = headers + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)
