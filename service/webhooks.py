"""POST /webhooks/codat: read, verify, parse, dedup + enqueue, answer. Never calls Codat.

Status codes (DESIGN.md): 202 new, 200 duplicate, 400 malformed body, 401 failed verification,
413 body too large, 503 + Retry-After when the queue cannot be written.
"""

from __future__ import annotations

import time

import structlog
from redis.exceptions import RedisError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from service import events
from service.config import MAX_BODY_BYTES
from service.metrics import ACK_SECONDS, DELIVERIES
from service.queue import Intake
from service.verification import BodyNotText, Rejected, Verifier

log = structlog.get_logger("service.webhooks")

# Codat retries a failed delivery on its own schedule; this is a hint for everyone else.
RETRY_AFTER_SECONDS = "5"


def _answer(status: int, outcome: str, **headers: str) -> Response:
    return Response(b'{"status":"%s"}' % outcome.encode(), status, headers or None, "application/json")


class WebhookReceiver:
    def __init__(self, verifier: Verifier, intake: Intake) -> None:
        self._verifier = verifier
        self._intake = intake

    async def receive(self, request: Request) -> Response:
        structlog.contextvars.clear_contextvars()
        started = time.perf_counter()
        try:
            body = await _read_capped(request, MAX_BODY_BYTES)
        except ClientDisconnect:
            log.warning("webhook.client_disconnected")
            return _answer(400, "disconnected")
        if body is None:
            return self._refuse(413, "too_large", "body_too_large", limit=MAX_BODY_BYTES)
        try:
            message_id = self._verifier.verify(request.headers, body)
        except Rejected as rejected:
            return self._refuse(401, "rejected", rejected.reason)
        except BodyNotText:
            return self._refuse(400, "malformed", "body_not_utf8")
        try:
            event = events.parse(body, message_id, int(time.time() * 1000))
        except events.Malformed as malformed:
            return self._refuse(400, "malformed", malformed.reason, webhook_id=message_id)

        structlog.contextvars.bind_contextvars(webhook_id=event.message_id, event_type=event.event_type)
        type_label = event.event_type if event.known else "unknown"
        if not event.known:
            # Accepted all the same: a 4xx makes Codat retry and finally disable the endpoint.
            log.warning("webhook.unknown_event_type")
        try:
            queued = await self._intake.enqueue_once(event)
        except (RedisError, OSError) as exc:
            log.error("webhook.enqueue_failed", error=type(exc).__name__, retry_after=RETRY_AFTER_SECONDS)
            DELIVERIES.labels("unavailable", "redis", type_label).inc()
            return _answer(503, "unavailable", **{"Retry-After": RETRY_AFTER_SECONDS})
        finally:
            ACK_SECONDS.observe(time.perf_counter() - started)
        outcome = "accepted" if queued else "duplicate"
        DELIVERIES.labels(outcome, "", type_label).inc()
        log.info(f"webhook.{outcome}", company_id=event.company_id, connection_id=event.connection_id)
        return _answer(202 if queued else 200, outcome)

    def _refuse(self, status: int, outcome: str, reason: str, **fields: object) -> Response:
        log.warning(f"webhook.{outcome}", reason=reason, status=status, **fields)
        DELIVERIES.labels(outcome, reason, "").inc()
        return _answer(status, outcome)


async def _read_capped(request: Request, limit: int) -> bytes | None:
    """The body, or None once it exceeds `limit`, without reading further."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
