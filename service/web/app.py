"""The web process: the Starlette application and what it holds for its lifetime (service.web.deps,
built once here and handed to every route)."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from service.core import logs
from service.core.config import Settings
from service.web.console import console_routes
from service.web.deps import WebDeps
from service.web.headers import SecurityHeaders
from service.web.metrics import metrics_endpoint
from service.web.ops import ops_routes
from service.web.webhooks import PATH, WebhookEndpoint


class WebApp(Starlette):
    """Starlette, with the one hot route taken at the door.

    A delivery would otherwise pass four middleware layers (errors, the /ops headers, exceptions,
    the router's match), each a coroutine of its own and a wrapper around `send`, which cost
    more than verifying it. `POST /webhooks/codat` goes straight to its endpoint, which
    needs none of them: it answers its own errors (a 500 as Starlette's, then the exception for
    uvicorn to log), and is not under /ops. Every other request, and a delivery under a
    root_path (the router strips it), takes the full way; so do other methods on the webhook's
    path (the router's 405).
    """

    def __init__(self, webhook: ASGIApp, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._webhook = webhook

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        webhook = scope["type"] == "http" and scope["path"] == PATH and scope["method"] == "POST"
        if webhook and not scope.get("root_path"):
            scope["app"] = self
            await self._webhook(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> WebApp:
    settings = settings or Settings.from_env()
    logs.configure(settings.log_level, settings.log_format, secrets=settings.credentials())
    deps = WebDeps.build(settings)
    webhooks = WebhookEndpoint(deps.verifier, deps.intake, deps.marks)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        try:
            await deps.redis.ping()
        except (RedisError, OSError) as exc:
            return JSONResponse({"status": "unavailable", "redis": type(exc).__name__}, 503)
        return JSONResponse({"status": "ready"})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # What is loaded by now lives as long as the process: keep it out of the collector's
        # full passes, which otherwise walk every module object on each one.
        gc.freeze()
        deps.marks.start()  # records the time no web was running, then the last 2xx per family
        yield
        await deps.marks.stop()
        await deps.redis.aclose()

    routes: list[BaseRoute] = [
        Route(PATH, webhooks, methods=["POST"]),  # under a root_path; other methods: 405
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint(deps)),
    ]
    if deps.auth is not None:  # OPS_TOKEN unset: the /ops routes do not exist (404)
        routes += ops_routes(deps, deps.auth)
        routes += console_routes(deps, deps.auth)  # the ops console, under /ops/console/
    # Every /ops answer, whichever route (or none) gave it: no-store, nosniff, CSP, ...
    return WebApp(webhooks, routes=routes, lifespan=lifespan, middleware=[Middleware(SecurityHeaders)])
