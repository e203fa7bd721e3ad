"""POST /webhooks/codat over real HTTP (uvicorn) into a real Valkey."""

from __future__ import annotations

import asyncio
import base64
import socket
import time
import uuid

import httpx
import orjson
import pytest
import redis

from tests.support import (
    LEGACY_AUTH,
    OLD_SECRET,
    OPS_TOKEN,
    SECRET,
    Web,
    catalogue_examples,
    queued_events,
    sign,
    sign_bytes,
    wait_until,
    written,
)

EXAMPLES = catalogue_examples()
LEGACY_EXAMPLES = [e for e in EXAMPLES if "RuleType" in e[2]]
CONNECTED = next(body for _, t, body in EXAMPLES if t == "connection.connected")
PATH = "/webhooks/codat"


def post(client: httpx.Client, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return client.post(PATH, content=body, headers=headers)


@pytest.mark.parametrize(("name", "event_type", "example"), EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_every_example_is_accepted_and_enqueued_exactly_once(
    client: httpx.Client, store: redis.Redis, name: str, event_type: str, example: dict
) -> None:
    body = orjson.dumps(example)
    headers = sign(body)
    assert post(client, body, headers).status_code == 202
    assert post(client, body, headers).status_code == 200  # Svix's retry of the same message
    [event] = queued_events(store)
    assert event["message_id"] == headers["webhook-id"]
    assert event["event_type"] == event_type
    assert event["known"] is True
    assert event["body"] == example


@pytest.mark.parametrize(("name", "event_type", "example"), LEGACY_EXAMPLES, ids=[e[0] for e in LEGACY_EXAMPLES])
def test_legacy_examples_with_the_configured_authorization(
    client: httpx.Client, store: redis.Redis, name: str, event_type: str, example: dict
) -> None:
    body = orjson.dumps(example)
    headers = {"authorization": LEGACY_AUTH, "content-type": "application/json"}
    assert post(client, body, headers).status_code == 202
    assert post(client, body, headers).status_code == 200  # dedup on AlertId
    [event] = queued_events(store)
    assert event["message_id"] == example["AlertId"]
    assert event["event_type"] == event_type and event["legacy"] is True


def test_svix_header_family(client: httpx.Client, store: redis.Redis) -> None:
    body = orjson.dumps(CONNECTED)
    assert post(client, body, sign(body, prefix="svix")).status_code == 202
    assert len(queued_events(store)) == 1


@pytest.mark.parametrize("secret", [SECRET, OLD_SECRET], ids=["current", "previous"])
def test_either_secret_during_rotation(client: httpx.Client, store: redis.Redis, secret: str) -> None:
    body = orjson.dumps(CONNECTED)
    assert post(client, body, sign(body, secret=secret)).status_code == 202


def test_several_signatures_in_one_header(client: httpx.Client, store: redis.Redis) -> None:
    body = orjson.dumps(CONNECTED)
    headers = sign(body)
    wrong = sign(body, secret="whsec_" + base64.b64encode(b"x" * 32).decode(), msg_id=headers["webhook-id"])
    headers["webhook-signature"] = f"v1a,abc {wrong['webhook-signature']} {headers['webhook-signature']}"
    assert post(client, body, headers).status_code == 202


def _tampered() -> tuple[bytes, dict[str, str]]:
    body = orjson.dumps(CONNECTED)
    return body.replace(b"Linked", b"Lynked"), sign(body)


def _with(**changes: str | None) -> tuple[bytes, dict[str, str]]:
    body = orjson.dumps(CONNECTED)
    headers = sign(body)
    for key, value in changes.items():
        name = key.replace("_", "-")
        if value is None:
            headers.pop(name)
        else:
            headers[name] = value
    return body, headers


REJECTIONS = {
    "tampered body": (_tampered, "bad_signature"),
    "unknown secret": (
        lambda: (b := orjson.dumps(CONNECTED), sign(b, secret="whsec_" + base64.b64encode(b"z" * 32).decode())),
        "bad_signature",
    ),
    "no headers": (lambda: (orjson.dumps(CONNECTED), {}), "missing_headers"),
    "missing id": (lambda: _with(webhook_id=None), "missing_headers"),
    "missing timestamp": (lambda: _with(webhook_timestamp=None), "missing_headers"),
    "missing signature": (lambda: _with(webhook_signature=None), "missing_headers"),
    "stale timestamp": (
        lambda: (b := orjson.dumps(CONNECTED), sign(b, timestamp=int(time.time()) - 301)),
        "stale_timestamp",
    ),
    "future timestamp": (
        lambda: (b := orjson.dumps(CONNECTED), sign(b, timestamp=int(time.time()) + 301)),
        "future_timestamp",
    ),
    "timestamp not a number": (lambda: _with(webhook_timestamp="yesterday"), "malformed_timestamp"),
    "timestamp as float": (lambda: _with(webhook_timestamp=f"{time.time():.3f}"), "malformed_timestamp"),
    "signature without comma": (lambda: _with(webhook_signature="v1abcdef"), "malformed_signature"),
    "signature not base64 length": (lambda: _with(webhook_signature="v1,abc"), "malformed_signature"),
    "signature of another scheme only": (lambda: _with(webhook_signature="v1a," + "A" * 88), "malformed_signature"),
    "signature right length wrong value": (lambda: _with(webhook_signature="v1," + "A" * 43 + "="), "bad_signature"),
    "id too long": (lambda: _with(webhook_id="m" * 300), "malformed_id"),
    "wrong legacy authorization": (
        lambda: (orjson.dumps(LEGACY_EXAMPLES[0][2]), {"authorization": LEGACY_AUTH + "x"}),
        "bad_authorization",
    ),
    "legacy authorization, empty": (
        lambda: (orjson.dumps(LEGACY_EXAMPLES[0][2]), {"authorization": ""}),
        "bad_authorization",
    ),
}


@pytest.mark.parametrize("case", REJECTIONS, ids=list(REJECTIONS))
def test_failed_verification_is_401_and_enqueues_nothing(
    client: httpx.Client, store: redis.Redis, web: Web, case: str
) -> None:
    make, reason = REJECTIONS[case]
    body, headers = make()
    since = web.log_offset()
    response = post(client, body, headers)
    assert response.status_code == 401
    assert queued_events(store) == []
    assert written(store) == []  # no dedup record either: Codat's retry must still be accepted
    [line] = [line for line in web.logs(since) if line["event"] == "webhook.rejected"]
    assert line["reason"] == reason and line["level"] == "warning"


def test_non_latin_header_value_is_401_not_500(web: Web, store: redis.Redis) -> None:
    body = orjson.dumps(CONNECTED)
    headers = sign(body)
    raw = [(k.encode(), v.encode()) for k, v in headers.items() if k != "webhook-signature"]
    raw.append((b"webhook-signature", "v1,ü".encode() + b"\xff" * 41))
    response = httpx.post(f"{web.url}{PATH}", content=body, headers=raw)
    assert response.status_code == 401
    assert queued_events(store) == []


def test_concurrent_duplicates_make_one_job(web: Web, store: redis.Redis) -> None:
    body = orjson.dumps(CONNECTED)
    headers = sign(body)

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=web.url, timeout=10) as http:
            responses = await asyncio.gather(*(http.post(PATH, content=body, headers=headers) for _ in range(30)))
        return sorted(r.status_code for r in responses)

    assert asyncio.run(burst()) == [200] * 29 + [202]
    assert len(queued_events(store)) == 1


def test_same_event_under_a_new_message_id_is_a_new_delivery(client: httpx.Client, store: redis.Redis) -> None:
    # Dedup is on the message id (DESIGN.md); a replay under a new id is queued, and the
    # workers' own idempotence (one initial sync per connection) absorbs it.
    body = orjson.dumps(CONNECTED)
    assert post(client, body, sign(body)).status_code == 202
    assert post(client, body, sign(body)).status_code == 202
    assert len(queued_events(store)) == 2


def test_unknown_event_type_is_accepted_logged_and_counted(client: httpx.Client, store: redis.Redis, web: Web) -> None:
    body = orjson.dumps({"id": str(uuid.uuid4()), "eventType": "brand.new.event", "payload": {}})
    headers = sign(body)
    since = web.log_offset()
    assert post(client, body, headers).status_code == 202
    [event] = queued_events(store)
    assert event["event_type"] == "brand.new.event" and event["known"] is False
    [line] = [line for line in web.logs(since) if line["event"] == "webhook.unknown_event_type"]
    assert line["webhook_id"] == headers["webhook-id"] and line["event_type"] == "brand.new.event"
    metrics = client.get("/metrics").text
    assert 'codat_webhook_deliveries_total{event_type="unknown",outcome="accepted",reason=""}' in metrics


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty_body"),
        (b"{this is not json", "not_json"),
        (b'["a JSON array"]', "not_an_object"),
        (b'{"eventType": "connection.connected", "name": "\xff\xfe"}', "body_not_utf8"),
    ],
    ids=["empty", "not json", "not an object", "not utf-8"],
)
def test_signed_but_malformed_body_is_400(
    client: httpx.Client, store: redis.Redis, web: Web, body: bytes, reason: str
) -> None:
    since = web.log_offset()
    assert post(client, body, sign_bytes(body)).status_code == 400
    assert written(store) == []
    [line] = [line for line in web.logs(since) if line["event"] == "webhook.malformed"]
    assert line["reason"] == reason


def test_oversized_body_is_413(client: httpx.Client, store: redis.Redis) -> None:
    body = b'{"pad": "' + b"x" * (1024 * 1024) + b'"}'
    assert post(client, body, sign(body)).status_code == 413
    assert written(store) == []


def test_oversized_chunked_body_without_length_is_413(client: httpx.Client, store: redis.Redis) -> None:
    def chunks():  # no Content-Length: the cap must hold while streaming
        yield b'{"pad": "'
        for _ in range(20):
            yield b"x" * 65536
        yield b'"}'

    response = client.post(PATH, content=chunks(), headers=sign(b"{}"))
    assert response.status_code == 413
    assert written(store) == []


def test_body_of_exactly_the_cap_is_read(client: httpx.Client, store: redis.Redis) -> None:
    prefix = orjson.dumps(CONNECTED)[:-1] + b', "pad": "'
    body = prefix + b"x" * (1024 * 1024 - len(prefix) - 2) + b'"}'
    assert len(body) == 1024 * 1024
    assert post(client, body, sign(body)).status_code == 202


def test_health_and_readiness(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200


def test_no_secret_reaches_the_log(web: Web, client: httpx.Client, store: redis.Redis) -> None:
    body = orjson.dumps(LEGACY_EXAMPLES[0][2])
    post(client, body, {"authorization": LEGACY_AUTH})
    post(client, body, {"authorization": "Bearer wrong"})
    post(client, orjson.dumps(CONNECTED), sign(orjson.dumps(CONNECTED)))
    text = web.log_path.read_text()
    assert "webhook.accepted" in text
    for secret in (SECRET, OLD_SECRET, LEGACY_AUTH, SECRET.removeprefix("whsec_"), OPS_TOKEN):
        assert secret not in text


def test_log_context_of_one_delivery_never_reaches_the_next(client: httpx.Client, store: redis.Redis, web: Web) -> None:
    body = orjson.dumps(CONNECTED)
    headers = sign(body)
    since = web.log_offset()
    assert post(client, body, headers).status_code == 202
    assert post(client, body, {}).status_code == 401  # same keep-alive connection
    accepted, rejected = (line for line in web.logs(since) if line["event"].startswith("webhook."))
    assert accepted["webhook_id"] == headers["webhook-id"]
    assert "webhook_id" not in rejected and "event_type" not in rejected


def test_other_methods_are_405(client: httpx.Client) -> None:
    assert client.get(PATH).status_code == 405


def test_sender_hanging_up_mid_body_costs_nothing(web: Web, store: redis.Redis) -> None:
    body = orjson.dumps(CONNECTED)
    headers = sign(body)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    since = web.log_offset()
    with socket.create_connection(("127.0.0.1", web.port)) as sock:
        sock.sendall(
            f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode() + body[:50]
        )
    wait_until(
        lambda: any(line["event"] == "webhook.client_disconnected" for line in web.logs(since)),
        timeout=10,
        what="the disconnect logged",
    )
    assert written(store) == []
