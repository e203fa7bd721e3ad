"""The delivery's hot path made cheaper (issue 24), each shortcut held to what it replaces: the
masker's quick look to the full masking, the timestamp to structlog's, the one-step JSON pipeline
to the list of steps, the deflated job to the JSON job, the held response head to two writes,
and the webhook's own 500 to Starlette's. In-process: no server, no Redis."""

from __future__ import annotations

import asyncio
import datetime
import io
import itertools
import logging
import unittest.mock
import zlib
from typing import Any

import orjson
import pytest
import structlog
import zstandard
from structlog.contextvars import bind_contextvars, clear_contextvars

from service.core import events, logs
from service.core.config import MAX_BODY_BYTES
from service.stores import keys
from service.web.httpserver import OneWriteTransport
from service.web.verification import Verifier
from service.web.webhooks import SERVER_ERROR, WebhookEndpoint
from tests.support import SECRET, catalogue_examples, sign

CREDENTIALS = [SECRET, "codat-api-key-0123456789abcdef", "ops-token-0123456789abcdef0123"]


def _full_text(masker: logs.Masker, value: str) -> str:
    """Masker.text without its quick look: every step, always."""
    for form in masker.forms:
        value = value.replace(form, logs.REDACTED)
    value = logs._AUTH_SCHEME.sub(lambda match: f"{match.group(1)} {logs.REDACTED}", value)
    return masker._cut_tail(value)


def test_the_maskers_quick_look_never_skips_what_masking_would_change() -> None:
    masker = logs.Masker(CREDENTIALS)
    pieces = [
        *masker.forms,
        *(form[:cut] for form in masker.forms for cut in (3, 4, 9)),
        "Bearer ",
        "basic%20",
        "BASIC+",
        "ba\u017fic ",  # LATIN SMALL LETTER LONG S: the case-blind regex takes it for "s"
        "BEAR\u0131ER ",
        " ",
        "abcd",
        "\u00e9",
        "\x00",
    ]
    for count in (1, 2, 3):
        for parts in itertools.product(pieces, repeat=count):
            value = "".join(parts)
            assert masker.text(value) == _full_text(masker, value), value
            assert masker.may_hold([value, "info"]) or _full_text(masker, value) == value, value


def test_utc_timestamp_is_structlogs_to_the_character() -> None:
    """structlog writes datetime.now(UTC).isoformat() with "Z": no fraction at microsecond 0."""
    stamp = logs.UtcTimestamp()
    for ns in (0, 1_733_366_400_000_000_999, 1_733_366_400_123_456_789, 1_733_366_459_999_999_999):
        now = datetime.datetime.fromtimestamp(ns // 1_000_000_000, tz=datetime.UTC)
        now = now.replace(microsecond=ns // 1000 % 1_000_000)
        with unittest.mock.patch("time.time_ns", return_value=ns):
            assert stamp(None, "info", {})["timestamp"] == now.isoformat().replace("+00:00", "Z")
    before = structlog.processors.TimeStamper(fmt="iso", utc=True)(None, "info", {})["timestamp"]
    ours = stamp(None, "info", {})["timestamp"]
    after = structlog.processors.TimeStamper(fmt="iso", utc=True)(None, "info", {})["timestamp"]
    assert before[:19] <= ours[:19] <= after[:19] and ours.endswith("Z")


def test_the_one_step_json_pipeline_writes_what_the_list_of_steps_writes() -> None:
    redact = logs.Redact(CREDENTIALS)
    shared = [structlog.contextvars.merge_contextvars, structlog.processors.add_log_level, logs.UtcTimestamp(), redact]
    tail = [structlog.processors.dict_tracebacks]
    steps = [*shared, *tail, structlog.processors.JSONRenderer(serializer=logs._orjson_bytes)]

    def lines(processors: list[Any]) -> list[dict[str, Any]]:
        out = io.BytesIO()
        wrapper = structlog.make_filtering_bound_logger(logging.DEBUG)
        log = structlog.wrap_logger(structlog.BytesLogger(out), processors=processors, wrapper_class=wrapper)
        with unittest.mock.patch("time.time_ns", return_value=1_733_366_400_123_456_789):
            clear_contextvars()
            log.info("plain", count=1, token="t")
            bind_contextvars(webhook_id="msg_1", company_id="c")
            log.warning("webhook.rejected", reason="bad", note=f"Bearer {SECRET}", kind=object)
            log.warn("warned")
            try:
                raise ZeroDivisionError("boom")
            except ZeroDivisionError:
                log.exception("failed")
            log.info("not_an_error", exc_info=False)
            clear_contextvars()
        parsed = [orjson.loads(line) for line in out.getvalue().splitlines()]
        for line in parsed:  # the frames' locals name this test's own variables
            for exception in line.get("exception", []):
                exception.pop("frames")
        return parsed

    assert lines([logs.JsonLine(shared, tail)]) == lines(steps)


@pytest.mark.parametrize(("name", "event_type", "body"), catalogue_examples()[:40])
def test_a_compressed_job_reads_back_as_its_json(name: str, event_type: str, body: dict[str, Any]) -> None:
    event = events.parse(orjson.dumps(body), "msg_compressed", 1_733_366_400_123)
    plain = keys.serialize_job([event.to_dict()], event.received_at_ms)
    compressed = keys.serialize_event_job(event.to_dict(), event.received_at_ms)
    assert compressed.startswith(keys.JOB_ZSTD_V2)
    assert keys.deserialize_job(compressed) == keys.deserialize_job(plain) == orjson.loads(plain)
    assert len(compressed) < len(plain) / 2


def _deflated_v1(plain: bytes) -> bytes:
    """A job as a web before V2 queued it (keys.py, V1), for the workers still to read."""
    deflate = zlib.compressobj(3, zlib.DEFLATED, -12, 4, zlib.Z_DEFAULT_STRATEGY, keys.JOB_DICTIONARY_V1)
    return keys.JOB_DEFLATED_V1 + deflate.compress(plain) + deflate.flush()


@pytest.mark.parametrize(("name", "event_type", "body"), catalogue_examples()[:10])
def test_a_job_an_older_web_deflated_still_reads_back(name: str, event_type: str, body: dict[str, Any]) -> None:
    event = events.parse(orjson.dumps(body), "msg_deflated", 1_733_366_400_123)
    plain = keys.serialize_job([event.to_dict()], event.received_at_ms)
    assert keys.deserialize_job(_deflated_v1(plain)) == orjson.loads(plain)


def test_a_compressed_job_larger_than_any_queued_is_refused_before_it_is_read() -> None:
    # A frame that claims 1 GB (or does not say its size) is refused from its header: nothing is
    # allocated for it. A queued job cannot be so large: the body is bounded by MAX_BODY_BYTES.
    huge = zstandard.ZstdCompressor(write_content_size=True).compress(b" " * (keys.MAX_JOB_BYTES + 1))
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(b"{}")
    for frame in (huge, unsized):
        with pytest.raises(ValueError, match="larger than any queued"):
            keys.deserialize_job(keys.JOB_ZSTD_V2 + frame)
    bound = b'{"a":"' + b"x" * (keys.MAX_JOB_BYTES - 8) + b'"}'
    assert len(keys.deserialize_job(keys.JOB_ZSTD_V2 + zstandard.ZstdCompressor().compress(bound))["a"]) > 0


def test_the_largest_body_the_web_accepts_reads_back_from_its_job(monkeypatch: pytest.MonkeyPatch) -> None:
    # orjson writes a number again longer than it came (9e15: 9000000000000000.0, ~3.8x): a body
    # of MAX_BODY_BYTES made of them is the largest job a delivery makes. Read back whole, never
    # refused by the bound on what a compressed job may say its size is (a refusal there deletes
    # the job: arq fails what it cannot read).
    numbers = b",".join([b"9e15"] * ((MAX_BODY_BYTES - 200) // 5))
    body = b'{"id":"e1","eventType":"read.completed","payload":{"referenceCompany":{"id":"c1"},"n":[%s]}}' % numbers
    assert len(body) <= MAX_BODY_BYTES
    event = events.parse(body, "msg_largest", 1_733_366_400_123)
    plain = keys.serialize_job([event.to_dict()], event.received_at_ms)
    assert len(plain) > 3.5 * MAX_BODY_BYTES
    job = keys.serialize_event_job(event.to_dict(), event.received_at_ms)
    assert job.startswith(keys.JOB_ZSTD_V2)
    assert keys.deserialize_job(job) == orjson.loads(plain)
    # Past the bound all the same, the job is written as plain JSON, read without it.
    monkeypatch.setattr(keys, "MAX_JOB_BYTES", len(plain) - 1)
    job = keys.serialize_event_job(event.to_dict(), event.received_at_ms)
    assert job == plain and keys.deserialize_job(job) == orjson.loads(plain)


def test_a_compressed_job_refuses_what_the_json_job_refuses() -> None:
    deep: dict[str, Any] = {}
    inner = deep
    for _ in range(300):
        inner["a"] = {}
        inner = inner["a"]
    with pytest.raises(keys.Unqueueable) as refused:
        keys.serialize_event_job(deep, 1)
    assert refused.value.reason == "too_deep"


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def test_a_response_head_leaves_with_its_body_and_never_waits_past_the_turn() -> None:
    async def scenario() -> list[list[bytes]]:
        transport = _Transport()
        one = OneWriteTransport(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        seen = []
        one.write(b"head1")
        one.write(b"body1")  # the fixed answer: one write
        seen.append(list(transport.writes))
        one.write(b"head2")  # a streamed body's head: nothing follows in this turn
        seen.append(list(transport.writes))
        await asyncio.sleep(0)
        seen.append(list(transport.writes))
        one.write(b"head3")
        one.close()  # what is held goes before the close
        seen.append(list(transport.writes))
        await asyncio.sleep(0)
        return seen

    first, held, flushed, closed = asyncio.run(scenario())
    assert first == [b"head1body1"]
    assert held == [b"head1body1"]
    assert flushed == [b"head1body1", b"head2"]
    assert closed == [b"head1body1", b"head2", b"head3"]


def test_the_protocols_own_answers_and_closes_keep_their_place_behind_a_held_write() -> None:
    """The wrapper is the protocol's transport, not only the request cycle's: a head held for its
    body, then the protocol's own 400 for a malformed pipelined request and its close, in the same
    turn, leave in order and nothing is dropped; everything else is the real transport's."""
    import uvicorn.protocols.http.httptools_impl  # noqa: F401  (the protocol the web runs)

    from service.web.httpserver import BoundedHttpToolsProtocol

    class Real(_Transport):
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return {"peername": ("127.0.0.1", 5), "sockname": ("127.0.0.1", 8000)}.get(name, default)

        def pause_reading(self) -> None:
            pass

        def resume_reading(self) -> None:
            pass

        def set_write_buffer_limits(self, *args: Any) -> None:
            pass

    async def scenario() -> tuple[Real, Any]:
        from uvicorn.config import Config
        from uvicorn.server import ServerState

        async def app(scope: Any, receive: Any, send: Any) -> None:
            pass

        config = Config(app=app, http="httptools", log_config=None)
        config.load()
        protocol = BoundedHttpToolsProtocol(config=config, server_state=ServerState(), app_state={})
        real = Real()
        protocol.connection_made(real)  # type: ignore[arg-type]
        protocol.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")  # a HEAD's answer: held
        protocol.send_400_response("Invalid HTTP request received.")  # the next request's, same turn
        await asyncio.sleep(0)
        return real, protocol.transport

    real, wrapped = asyncio.run(scenario())
    assert isinstance(wrapped, OneWriteTransport)
    assert len(real.writes) == 1 and real.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"HTTP/1.1 400 Bad Request" in real.writes[0] and real.closed
    assert wrapped.get_extra_info("peername") == ("127.0.0.1", 5)


def test_a_bug_in_the_webhook_is_answered_500_as_starlette_would_then_raised() -> None:
    class BrokenIntake:
        async def enqueue_once(self, event: events.Event) -> bool:
            raise RuntimeError("a bug")

    body = orjson.dumps({"id": "x", "eventType": "company.created", "payload": {}})
    headers = [(k.encode(), v.encode()) for k, v in sign(body).items()]
    endpoint = WebhookEndpoint(Verifier([SECRET]), BrokenIntake())  # type: ignore[arg-type]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with pytest.raises(RuntimeError, match="a bug"):
        asyncio.run(endpoint({"type": "http", "headers": headers}, receive, send))
    assert sent == list(SERVER_ERROR)
    assert sent[0]["status"] == 500 and sent[1]["body"] == b"Internal Server Error"
