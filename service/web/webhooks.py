"""POST /webhooks/codat: read, verify, parse, dedup + enqueue, answer. Never calls Codat.

Status codes (README.md, "The contract"): 202 new, 200 duplicate, 400 malformed body, 401 failed verification,
413 body too large, 503 + Retry-After when the queue cannot be written (or, with REDIS_MIN_REPLICAS,
not confirmed by that many replicas in time: service.stores.replication).

This route is a plain ASGI app, which Starlette routes like any other (its Route still answers
405 to other methods). It is the one hot path: bursts of thousands of deliveries come through
here, its answers are a handful of fixed messages, and a Request/Response pair per delivery
cost more than the verification it guards.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import structlog
from redis.exceptions import RedisError
from starlette.types import Receive, Scope, Send

from service.core import events
from service.core.config import MAX_BODY_BYTES
from service.stores.delivery_health import DeliveryMarks
from service.stores.intake import Intake
from service.stores.keys import Unqueueable
from service.stores.replication import NotReplicated
from service.web.metrics import ACK_SECONDS, count_delivery
from service.web.verification import Unverified, Verifier

log = structlog.get_logger(__name__)

PATH = "/webhooks/codat"
# Codat retries a failed delivery on its own schedule; this is a hint for everyone else.
RETRY_AFTER_SECONDS = 5
_JSON = (b"content-type", b"application/json")


class Answer(NamedTuple):
    """One of the fixed answers, as the two ASGI messages that send it."""

    outcome: str
    start: dict[str, Any]
    body: dict[str, Any]


def _answer(status: int, outcome: str, *extra: tuple[bytes, bytes]) -> Answer:
    body = b'{"status":"%s"}' % outcome.encode()
    headers = [_JSON, (b"content-length", str(len(body)).encode()), *extra]
    return Answer(
        outcome,
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": body},
    )


ACCEPTED = _answer(202, "accepted")
DUPLICATE = _answer(200, "duplicate")
MALFORMED = _answer(400, "malformed")
REJECTED = _answer(401, "rejected")
TOO_LARGE = _answer(413, "too_large")
UNAVAILABLE = _answer(503, "unavailable", (b"retry-after", str(RETRY_AFTER_SECONDS).encode()))
# A bug's answer, as Starlette's ServerErrorMiddleware gives it (the route is served ahead of it:
# service.web.app.WebApp).
_ERROR_BODY = b"Internal Server Error"
SERVER_ERROR = (
    {
        "type": "http.response.start",
        "status": 500,
        "headers": [(b"content-length", b"%d" % len(_ERROR_BODY)), (b"content-type", b"text/plain; charset=utf-8")],
    },
    {"type": "http.response.body", "body": _ERROR_BODY},
)


class ClientGone(Exception):
    pass


class WebhookEndpoint:
    def __init__(self, verifier: Verifier, intake: Intake, marks: DeliveryMarks | None = None) -> None:
        self._verifier = verifier
        self._intake = intake
        self._marks = marks  # the last 2xx per family and the 503 intervals, in memory (issue 23)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # No clear_contextvars(): uvicorn runs each request in a task of its own, whose
        # context is a fresh copy, so what one delivery binds (on a failure) never reaches another.
        started = time.perf_counter()
        try:
            answer = await self._handle(scope, receive)
        except ClientGone:
            log.warning("webhook.client_disconnected")
            return
        except Exception:
            await send(SERVER_ERROR[0])  # nothing was sent yet: every answer goes out below
            await send(SERVER_ERROR[1])
            raise  # for the server to log
        ACK_SECONDS.observe(time.perf_counter() - started)
        await send(answer.start)
        await send(answer.body)

    async def _handle(self, scope: Scope, receive: Receive) -> Answer:
        # ASGI header names are lower case: a dict gives O(1) lookups.
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        body = await _read_capped(receive, headers.get("content-length", ""), MAX_BODY_BYTES)
        if body is None:
            return self._refuse(TOO_LARGE, "body_too_large", limit=MAX_BODY_BYTES)
        try:
            message_id = self._verifier.verify(headers, body)
        except Unverified as rejected:
            return self._refuse(REJECTED, rejected.reason)
        try:
            event = events.parse(body, message_id, int(time.time() * 1000))
        except events.Malformed as malformed:
            return self._refuse(MALFORMED, malformed.reason, webhook_id=message_id)

        # Every line about this delivery carries its ids; about a connection, the connection's.
        # They are given to each line, not bound to the task's context: binding four
        # contextvars and merging them back into the line cost as much as the rest of the line
        # (issue 24). What leaves as an exception is bound on its way out, so that the server's
        # line about it (a bug's traceback) carries them as well.
        about = {"webhook_id": event.message_id, "event_type": event.event_type, **event.ids()}
        try:
            return await self._enqueue(event, about)
        except BaseException:
            structlog.contextvars.bind_contextvars(**about)
            raise

    async def _enqueue(self, event: events.Event, about: dict[str, str]) -> Answer:
        type_label = event.event_type if event.known else "unknown"
        if not event.known:
            # Accepted all the same: a 4xx makes Codat retry and finally disable the endpoint.
            log.warning("webhook.unknown_event_type", **about)
        try:
            queued = await self._intake.enqueue_once(event)
        except Unqueueable as unqueueable:
            # Verified, read, yet not writable back (e.g. nested deeper than the serialiser
            # goes): the body is unusable as sent, so a 400 and nothing written, never a 5xx.
            return self._refuse(MALFORMED, unqueueable.reason, **about)
        except (RedisError, OSError) as exc:
            # NotReplicated included: on the primary, not yet on enough replicas, so a failover
            # could still lose it. Codat's retry is a duplicate, answered 200 once replicated.
            reason = "not_replicated" if isinstance(exc, NotReplicated) else "redis"
            log.error(
                "webhook.enqueue_failed",
                error=type(exc).__name__,
                reason=reason,
                retry_after=RETRY_AFTER_SECONDS,
                **about,
            )
            count_delivery("unavailable", reason, type_label)
            if self._marks is not None:
                self._marks.unavailable(event.received_at_ms)
            return UNAVAILABLE
        outcome = "accepted" if queued else "duplicate"
        if self._marks is not None:
            self._marks.accepted(event.event_type, event.received_at_ms)
        count_delivery(outcome, "", type_label)
        log.info(f"webhook.{outcome}", **about)
        return ACCEPTED if queued else DUPLICATE

    def _refuse(self, answer: Answer, reason: str, **fields: object) -> Answer:
        log.warning(f"webhook.{answer.outcome}", reason=reason, status=answer.start["status"], **fields)
        count_delivery(answer.outcome, reason, "")
        return answer


async def _read_capped(receive: Receive, declared: str, limit: int) -> bytes | None:
    """The body, or None once it exceeds `limit`, without reading further."""
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
