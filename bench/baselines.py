"""The two reference points the service is measured against, as uvicorn app factories.

ceiling: a bare Starlette endpoint that reads the body and answers 200; nothing is faster.
naive:   what one writes first: standardwebhooks' Webhook.verify, then arq's enqueue_job
         (WATCH, EXISTS, MULTI/EXEC: three round trips), the message id as arq's job id.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from arq.connections import RedisSettings, create_pool
from standardwebhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def ceiling_app() -> Starlette:
    async def receive(request: Request) -> Response:
        await request.body()
        return Response(b'{"status":"ok"}', 200, media_type="application/json")

    return Starlette(routes=[Route("/webhooks/codat", receive, methods=["POST"])])


def naive_app() -> Starlette:
    webhook = Webhook(os.environ["CODAT_WEBHOOK_SECRETS"].split(",")[0])
    state = {}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state["arq"] = await create_pool(RedisSettings.from_dsn(os.environ["REDIS_URL"]))
        yield
        await state["arq"].aclose()

    async def receive(request: Request) -> Response:
        body = await request.body()
        try:
            event = webhook.verify(body, dict(request.headers))
        except WebhookVerificationError:
            return Response(b'{"status":"rejected"}', 401, media_type="application/json")
        job = await state["arq"].enqueue_job("process_event", event, _job_id=request.headers["webhook-id"])
        status = 202 if job is not None else 200
        return Response(b'{"status":"accepted"}', status, media_type="application/json")

    return Starlette(routes=[Route("/webhooks/codat", receive, methods=["POST"])], lifespan=lifespan)
