"""The web process: the Starlette application and what it holds for its lifetime."""

from __future__ import annotations

import gc
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.core import logs
from service.core.config import Settings
from service.core.logs import Masker
from service.stores.client import connect
from service.stores.connections import ConnectionStore
from service.stores.deadletters import DeadLetters
from service.stores.delivery_health import DeliveryMarks
from service.stores.gaps import GapStore
from service.stores.intake import Intake
from service.stores.lifecycle import LifecycleStream
from service.stores.reconcile import ReconcileStore
from service.stores.replication import Replication
from service.stores.syncs import SyncStore
from service.web.console import console_routes
from service.web.guessing import WrongGuesses
from service.web.headers import SecurityHeaders
from service.web.metrics import metrics_endpoint
from service.web.ops import ops_routes
from service.web.verification import Verifier
from service.web.webhooks import WebhookEndpoint


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    logs.configure(settings.log_level, settings.log_format, secrets=settings.credentials())
    redis = connect(settings.redis_url)
    verifier = Verifier(
        settings.webhook_secrets,
        legacy_authorization=settings.webhook_auth,
        tolerance_seconds=settings.tolerance_seconds,
    )
    marks = DeliveryMarks(redis, GapStore(redis), f"{socket.gethostname()}:{os.getpid()}")
    intake = Intake(redis, Replication.of(settings), dedup_ttl_seconds=settings.dedup_ttl_seconds)
    webhooks = WebhookEndpoint(verifier, intake, marks)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        try:
            await redis.ping()
        except (RedisError, OSError) as exc:
            return JSONResponse({"status": "unavailable", "redis": type(exc).__name__}, 503)
        return JSONResponse({"status": "ready"})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # What is loaded by now lives as long as the process: keep it out of the collector's
        # full passes, which otherwise walk every module object on each one.
        gc.freeze()
        marks.start()  # records the time no web was running, then the last 2xx per family
        yield
        await marks.stop()
        await redis.aclose()

    routes = [
        Route("/webhooks/codat", webhooks, methods=["POST"]),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint(redis, settings.silence_alert_seconds)),
    ]
    if settings.ops_token:  # unset: the /ops routes do not exist (404)
        guesses = WrongGuesses()  # one pace for wrong tokens, bearer and console login alike
        routes += ops_routes(
            settings.ops_token,
            ConnectionStore(redis),
            DeadLetters(redis, settings.credentials()),
            SyncStore(redis),
            ReconcileStore(redis),
            LifecycleStream(redis, settings.events_stream),
            guesses=guesses,
            mask=Masker(settings.credentials()),
        )
        routes += console_routes(settings, redis, guesses)  # the ops console, under /ops/console/
    # Every /ops answer, whichever route (or none) gave it: no-store, nosniff, CSP, ...
    return Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(SecurityHeaders)])
