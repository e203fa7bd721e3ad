"""Acknowledged means replicated (service.stores.replication), against a real Sentinel setup:
one primary, two replicas, three sentinels (tests/failover/cluster.py) and the web process on a
`redis+sentinel://` URL. One round of each fault; `make failover` runs several, with workers.

- primary killed under traffic: every delivery answered 2xx is on the promoted replica;
- replicas lagging (SIGSTOP) with REDIS_MIN_REPLICAS=1: deliveries get 503, not 202; then the
  primary is killed and every one, retried as Codat does, ends up answered and on the new primary;
- primary cut off from the sentinels, REDIS_MIN_REPLICAS=0: the role check moves the web to the
  promoted replica within seconds, without a restart;
- a duplicate is answered 200 only once the original is replicated, whichever connection wrote it;
- the first-sync claim is replicated before Codat is called.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.core.config import ConfigError, Settings
from service.stores.replication import Replication
from tests.failover.cluster import Cluster
from tests.failover.traffic import Sender
from tests.support import (
    SECRET,
    SandboxControl,
    Web,
    Workers,
    connection_event,
    deliver,
    linked_connection,
    service_env,
    wait_until,
)
from workers.redis_settings import redis_settings, sentinel_pool


def body() -> dict[str, object]:
    return {
        "id": str(uuid.uuid4()),
        "eventType": "client.rateLimit.reset",
        "generatedDate": "2026-01-01T00:00:00Z",
        "payload": {},
    }


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    nodes = Cluster(tmp_path / "cluster", replicas=2).start()
    yield nodes
    nodes.stop()


def web_on(cluster: Cluster, tmp_path: Path, replicas: int) -> Web:
    env = service_env(cluster.url, REDIS_MIN_REPLICAS=str(replicas), REDIS_REPLICA_TIMEOUT_MS="300")
    return Web(env, tmp_path / "web.log").start()


def missing_on(cluster: Cluster, sender: Sender) -> list[str]:
    """Acknowledged deliveries the primary (as the sentinels name it now) does not hold."""
    primary = cluster.primary().client()
    return [d.msg_id for d in sender.acked() if not primary.exists(f"codat:seen:{d.msg_id}")]


def test_primary_killed_under_traffic_loses_no_acknowledged_delivery(cluster: Cluster, tmp_path: Path) -> None:
    web = web_on(cluster, tmp_path, replicas=1)
    sender = Sender(web.url)
    try:
        sender.run(rate=50, seconds=1, body=body)
        old = cluster.primary()
        killed_at = time.monotonic()
        old.kill()
        sender.run(rate=50, seconds=1, body=body)
        cluster.wait_failover(old.port)
        sender.run(rate=50, seconds=2, body=body)
        sender.finish(timeout=30)
    finally:
        web.stop()
    assert all(d.acked for d in sender.deliveries), "a delivery was never answered 2xx"
    assert missing_on(cluster, sender) == []
    assert (back := sender.first_ack_after(killed_at)) is not None and back < 15


def test_lagging_replicas_turn_deliveries_into_503_and_none_is_lost(cluster: Cluster, tmp_path: Path) -> None:
    web = web_on(cluster, tmp_path, replicas=1)
    sender = Sender(web.url, retry_after=0.3)
    old = cluster.primary()
    replicas = cluster.replicas_of(old)
    try:
        with httpx.Client(base_url=web.url) as http:  # replicated while they keep up
            assert http.post("/webhooks/codat").status_code == 401
        for replica in replicas:
            replica.pause()
        burst = [sender.send(body(), retry=False) for _ in range(20)]
        wait_until(lambda: all(d.statuses for d in burst), timeout=10, what="the burst answered")
        # On the primary, on no replica: not acknowledged, so Codat keeps it.
        assert {d.statuses[0] for d in burst} == {503}
        assert all(old.client().exists(f"codat:seen:{d.msg_id}") for d in burst)
        # Then the primary dies before the replicas caught up, and Codat retries.
        old.kill()
        for replica in replicas:
            replica.resume()
        cluster.wait_failover(old.port)
        retried = [sender.send(d.body, msg_id=d.msg_id) for d in burst]
        sender.finish(timeout=30)
    finally:
        web.stop()
    assert all(d.acked for d in retried)
    assert missing_on(cluster, sender) == []


def test_web_leaves_a_primary_cut_off_from_the_sentinels(cluster: Cluster, tmp_path: Path) -> None:
    # REDIS_MIN_REPLICAS=0: no failing WAIT tells the web; the role check alone must.
    web = web_on(cluster, tmp_path, replicas=0)
    sender = Sender(web.url)
    old = cluster.primary()
    try:
        sender.run(rate=20, seconds=0.5, body=body)
        cluster.cut_off(old)
        new_port = cluster.wait_failover(old.port)
        switched_at = time.monotonic()
        wait_until(
            lambda: any(line["event"] == "redis.primary_moved" for line in web.logs()),
            timeout=10,
            what="the role check (once a second) to move the web",
        )
        after = [sender.send(body()) for _ in range(20)]
        sender.finish(timeout=20)
    finally:
        web.stop()
        cluster.heal(old)
    new = cluster.node(new_port).client()
    assert all(d.acked for d in after)
    assert [d.msg_id for d in after if not new.exists(f"codat:seen:{d.msg_id}")] == []
    assert time.monotonic() - switched_at < 30


def test_a_duplicate_waits_for_the_original_to_be_replicated(cluster: Cluster, tmp_path: Path) -> None:
    # The original is written by another process (its own connection) that does not wait.
    unwaiting = Web(service_env(cluster.url), tmp_path / "web0.log").start()
    web = web_on(cluster, tmp_path, replicas=1)
    replicas = cluster.replicas_of(cluster.primary())
    try:
        with httpx.Client(base_url=unwaiting.url) as first, httpx.Client(base_url=web.url) as again:
            for replica in replicas:
                replica.pause()
            original = body()
            assert deliver(first, original, msg_id="msg_dup_1").status_code == 202  # on the primary alone
            assert deliver(again, original, msg_id="msg_dup_1").status_code == 503  # not yet a safe 200
            for replica in replicas:
                replica.resume()
            assert deliver(again, original, msg_id="msg_dup_1").status_code == 200
    finally:
        for replica in replicas:
            replica.resume()
        web.stop()
        unwaiting.stop()


def test_the_first_sync_claim_is_replicated_before_codat_is_called(
    cluster: Cluster, tmp_path: Path, sandbox: SandboxControl
) -> None:
    # The delivery is taken by a web that does not wait; the worker must, before its Codat call.
    web = Web(service_env(cluster.url), tmp_path / "web.log").start()
    workers = Workers(cluster.url, sandbox.url, tmp_path)
    workers.start(1, REDIS_MIN_REPLICAS="1", REDIS_REPLICA_TIMEOUT_MS="300")
    replicas = cluster.replicas_of(cluster.primary())
    company, connection = linked_connection(sandbox)
    try:
        for replica in replicas:
            replica.pause()
        with httpx.Client(base_url=web.url) as http:
            event = connection_event("connection.connected", company, connection, "Linked")
            assert deliver(http, event).status_code == 202
        wait_until(
            lambda: any(line.get("reason") == "redis_unavailable" for line in workers.logs()),
            timeout=20,
            what="the job deferred on its unreplicated claim",
        )
        assert sandbox.calls(company, "/data/all") == []  # the claim is on the primary alone
        for replica in replicas:
            replica.resume()
        wait_until(lambda: sandbox.calls(company, "/data/all"), timeout=20, what="the first sync")
        time.sleep(1)
        assert len(sandbox.calls(company, "/data/all")) == 1
    finally:
        for replica in replicas:
            replica.resume()
        workers.stop()
        web.stop()


async def test_the_workers_pool_times_out_on_a_frozen_primary(cluster: Cluster) -> None:
    # arq's own Sentinel pool has no socket timeouts: a frozen primary would hang a worker.
    pool = await sentinel_pool(redis_settings(cluster.url))
    primary = cluster.primary()
    try:
        assert await pool.ping()
        primary.pause()
        started = time.monotonic()
        async with asyncio.timeout(10):  # without socket timeouts: this, a hang
            with pytest.raises(RedisTimeoutError):
                await pool.ping()
        assert time.monotonic() - started < 5
    finally:
        primary.resume()
        await pool.aclose()


def test_replication_settings() -> None:
    base = {"REDIS_URL": "redis://r:6379/0", "CODAT_WEBHOOK_SECRETS": SECRET}
    assert Replication.of(Settings.from_env(base)) == Replication(0, 1000)  # today's behaviour
    tuned = Settings.from_env({**base, "REDIS_MIN_REPLICAS": "1", "REDIS_REPLICA_TIMEOUT_MS": "250"})
    assert Replication.of(tuned) == Replication(1, 250)
    # A longer WAIT than the clients' 2 s read timeout would look like a dead Redis.
    with pytest.raises(ConfigError, match="REDIS_REPLICA_TIMEOUT_MS"):
        Settings.from_env({**base, "REDIS_REPLICA_TIMEOUT_MS": "5000"})
