"""The webhook's own lines and its verifier, in-process (issue 24 made both cheaper): every line
about a delivery carries its ids whichever way it ends, a failure leaving the endpoint takes them
along for the server's line, and one verifier verifies delivery after delivery with every secret.
No server, no Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from structlog.testing import capture_logs

from service.core import events
from service.stores.keys import Unqueueable
from service.web.verification import Unverified, Verifier
from service.web.webhooks import WebhookEndpoint
from tests.support import OLD_SECRET, SECRET, sign

COMPANY, CONNECTION = "company-lines", "connection-lines"
CONNECTED = orjson.dumps(
    {
        "id": "evt-lines",
        "eventType": "connection.connected",
        "generatedDate": "2026-01-01T00:00:00.000Z",
        "payload": {"referenceCompany": {"id": COMPANY}, "connection": {"id": CONNECTION}},
    }
)
UNKNOWN = orjson.dumps({"id": "evt-unknown", "eventType": "brand.new.event", "payload": {}})


class Intake:
    """Answers as the intake would: queued, a duplicate, or one of its failures."""

    def __init__(self, outcome: bool | BaseException) -> None:
        self.outcome = outcome

    async def enqueue_once(self, event: events.Event) -> bool:
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


def deliver(intake: Intake, body: bytes = CONNECTED) -> tuple[str, int, list[dict[str, Any]], dict[str, Any]]:
    """One delivery through the endpoint: its webhook id, the status answered, the lines it logged
    (with whatever its task's context carries), and the task's context once it ended."""
    headers = sign(body)
    endpoint = WebhookEndpoint(Verifier([SECRET]), intake)  # type: ignore[arg-type]
    scope = {"type": "http", "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def one_request() -> dict[str, Any]:  # a task of its own, as uvicorn runs each request
        try:
            await endpoint(scope, receive, send)
        except Exception:
            pass  # the server logs it, in this task's context: returned below
        return structlog.contextvars.get_contextvars()

    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as lines:
        context = asyncio.run(one_request())
    return headers["webhook-id"], sent[0]["status"], lines, context


@pytest.mark.parametrize(
    ("outcome", "body", "status", "events_logged"),
    [
        (True, CONNECTED, 202, ["webhook.accepted"]),
        (False, CONNECTED, 200, ["webhook.duplicate"]),
        (True, UNKNOWN, 202, ["webhook.unknown_event_type", "webhook.accepted"]),
        (RedisConnectionError("away"), CONNECTED, 503, ["webhook.enqueue_failed"]),
        (Unqueueable("too_deep"), CONNECTED, 400, ["webhook.malformed"]),
    ],
    ids=["accepted", "duplicate", "unknown type", "redis away", "unqueueable"],
)
def test_every_line_about_a_delivery_carries_its_ids(
    outcome: bool | BaseException, body: bytes, status: int, events_logged: list[str]
) -> None:
    webhook_id, answered, lines, _ = deliver(Intake(outcome), body)
    assert answered == status
    assert [line["event"] for line in lines] == events_logged
    event_type = orjson.loads(body)["eventType"]
    for line in lines:
        assert line["webhook_id"] == webhook_id and line["event_type"] == event_type, line
        if body is CONNECTED:
            assert line["company_id"] == COMPANY and line["connection_id"] == CONNECTION, line


def test_a_failure_leaving_the_endpoint_takes_the_deliverys_ids_to_the_servers_line() -> None:
    webhook_id, answered, lines, context = deliver(Intake(RuntimeError("a bug")))
    assert answered == 500 and lines == []
    assert context == {
        "webhook_id": webhook_id,
        "event_type": "connection.connected",
        "company_id": COMPANY,
        "connection_id": CONNECTION,
    }


def test_an_answered_delivery_leaves_nothing_bound() -> None:
    *_, context = deliver(Intake(True))
    assert context == {}


def test_one_verifier_verifies_delivery_after_delivery_with_every_secret() -> None:
    """Each secret's HMAC is set up once and copied per delivery: no delivery sees another's bytes."""
    verifier = Verifier([SECRET, OLD_SECRET])
    for number in range(4):
        for secret in (SECRET, OLD_SECRET, SECRET):
            body = b'{"n": %d}' % number
            headers = sign(body, secret=secret)
            assert verifier.verify(headers, body) == headers["webhook-id"]
        with pytest.raises(Unverified) as rejected:
            verifier.verify(sign(b'{"n": -1}'), body)
        assert rejected.value.reason == "bad_signature"
