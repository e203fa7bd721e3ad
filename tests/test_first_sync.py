"""The initial sync follows the connection's state, whatever order the events arrive in and
whatever fails on the way; workers ride out Redis outages. Real Valkey, web, arq workers and
the sandbox; every case counts what reached the (local) Codat API."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import redis

from tests.support import (
    OPS,
    SandboxControl,
    Workers,
    connection_event,
    deliver,
    idle,
    iso_at,
    linked_connection,
    own_valkey_and_web,
    state,
    sync_requested,
    wait_until,
)


def history(company: str, connection: str) -> dict[str, dict]:
    """connected (t2) -> disconnected (t3) -> reconnected (t4), by generatedDate."""
    return {
        "connected": connection_event("connection.connected", company, connection, generated=iso_at(-30)),
        "disconnected": connection_event(
            "connection.disconnected", company, connection, status="Unlinked", generated=iso_at(-20)
        ),
        "reconnected": connection_event("connection.reconnected", company, connection, generated=iso_at(-10)),
    }


def first_call_fails(
    client: httpx.Client, sandbox: SandboxControl, workers: Workers
) -> tuple[str, str, dict[str, dict]]:
    """A linked connection whose `connection.connected` was delivered and whose first data/all
    answered 503 (the claim is kept: the outcome of a 5xx is in doubt)."""
    company, connection = linked_connection(sandbox)
    sandbox.faults(company, {"status": 503, "times": 1, "match": "/data/all"})
    events = history(company, connection)
    workers.start(1)
    deliver(client, events["connected"])
    wait_until(lambda: sandbox.calls(company, "/data/all"), what="first call")
    return company, connection, events


def successful_syncs(sandbox: SandboxControl, company: str) -> int:
    return len(sandbox.calls(company, "/data/all", ok=True))


@pytest.mark.parametrize(
    "order",
    [
        ("disconnected", "reconnected", "connected"),  # the first link arrives last, stale
        ("disconnected", "connected", "reconnected"),  # stale while Unlinked, then relinked
        ("reconnected", "disconnected", "connected"),  # everything after the newest is stale
    ],
)
def test_a_late_first_link_still_syncs_once(
    order: tuple[str, ...], client: httpx.Client, store: redis.Redis, sandbox: SandboxControl, workers: Workers
) -> None:
    company, connection = linked_connection(sandbox)
    events = history(company, connection)
    workers.start(1)
    for name in order:
        assert deliver(client, events[name]).status_code == 202
        wait_until(lambda: idle(store), what=f"{name} processed")
    assert state(client, connection)["status"] == "Linked"  # reconnected (t4) is the newest
    assert sync_requested(client, connection)
    assert successful_syncs(sandbox, company) == 1


def test_reconnected_alone_is_not_a_first_link(
    client: httpx.Client, store: redis.Redis, sandbox: SandboxControl, workers: Workers
) -> None:
    company, connection = linked_connection(sandbox)
    events = history(company, connection)
    workers.start(1)
    deliver(client, events["disconnected"])
    deliver(client, events["reconnected"])
    wait_until(lambda: idle(store) and state(client, connection), what="processed")
    assert state(client, connection)["status"] == "Linked"
    assert not state(client, connection)["firstLinkSeen"]
    assert sandbox.calls(company, "/data/all") == []


def test_a_failed_first_call_is_resolved_after_a_relink(
    client: httpx.Client, store: redis.Redis, sandbox: SandboxControl, workers: Workers
) -> None:
    """The first data/all answers 503; disconnected and reconnected arrive before the retry,
    which then comes back stale: its claim is still resolved and the sync requested once."""
    company, connection, events = first_call_fails(client, sandbox, workers)
    deliver(client, events["disconnected"])
    deliver(client, events["reconnected"])
    wait_until(lambda: sync_requested(client, connection), timeout=30, what="initial sync")
    wait_until(lambda: idle(store), what="queue drained")
    assert [c["status"] for c in sandbox.calls(company, "/data/all")] == [503, 204]
    assert state(client, connection)["initialSync"] == "requested"


def test_a_claim_left_on_an_unlinked_connection_is_released_then_relinked(
    client: httpx.Client, store: redis.Redis, sandbox: SandboxControl, workers: Workers
) -> None:
    company, connection, events = first_call_fails(client, sandbox, workers)
    deliver(client, events["disconnected"])
    # the retry finds the connection Unlinked: nothing was requested, so the claim is released
    wait_until(
        lambda: idle(store) and state(client, connection)["initialSync"] is None, timeout=30, what="claim released"
    )
    assert state(client, connection)["status"] == "Unlinked"
    deliver(client, events["reconnected"])
    wait_until(lambda: sync_requested(client, connection), timeout=30, what="initial sync after relink")
    assert [c["status"] for c in sandbox.calls(company, "/data/all")] == [503, 204]


def test_worker_rides_out_a_valkey_restart(sandbox: SandboxControl, tmp_path: Path) -> None:
    with own_valkey_and_web(tmp_path) as (server, web):
        pool = Workers(server.connection_url, sandbox.url, tmp_path)
        try:
            [worker] = pool.start(1)
            # polling: past its start, which needs Redis (an unreachable Redis at start is a refusal)
            probe = redis.Redis(host=server.host, port=server.port)
            wait_until(lambda: probe.exists("arq:queue:health-check"), what="worker polling")
            probe.close()
            server.stop()
            with httpx.Client(base_url=web.url, timeout=10) as client:
                wait_until(lambda: client.get("/readyz").status_code == 503, what="web sees Redis down")
                time.sleep(5)
                server.start()
                wait_until(lambda: client.get("/readyz").status_code == 200, what="web recovered")
                assert worker.proc is not None and worker.proc.poll() is None, "worker exited on a Redis restart"
                company, connection = linked_connection(sandbox)
                wait_until(
                    lambda: (
                        deliver(client, connection_event("connection.connected", company, connection)).status_code
                        == 202
                    ),
                    what="accepted after the restart",
                )
                wait_until(lambda: sync_requested(client, connection), timeout=30, what="initial sync")
            events = [line["event"] for line in worker.logs()]
            assert events.count("worker.redis_unavailable") == 1
            assert events.count("worker.redis_recovered") == 1
            assert worker.proc.poll() is None
        finally:
            pool.stop()


def test_a_redis_error_inside_a_job_is_a_retry_not_a_dead_letter(sandbox: SandboxControl, tmp_path: Path) -> None:
    with own_valkey_and_web(tmp_path) as (server, web):
        pool = Workers(server.connection_url, sandbox.url, tmp_path)
        try:
            company, connection = linked_connection(sandbox)
            # the call is carried out at once and answered 3 s late: Redis goes away meanwhile
            sandbox.faults(company, {"delay": 3, "times": 1, "match": "/data/all"})
            [worker] = pool.start(1)
            with httpx.Client(base_url=web.url, timeout=10) as client:
                deliver(client, connection_event("connection.connected", company, connection))
                wait_until(lambda: sandbox.calls(company, "/data/all"), what="call in flight")
                server.stop()
                wait_until(
                    lambda: any(line["event"] == "worker.redis_unavailable" for line in worker.logs()),
                    timeout=30,
                    what="worker sees the outage",
                )
                server.start()
                wait_until(lambda: sync_requested(client, connection), timeout=60, what="initial sync")
                letters = client.get("/ops/dead-letters", headers=OPS).json()["deadLetters"]
            events = [line["event"] for line in worker.logs()]
            assert "job.failed_unexpectedly" not in events
            assert letters == []
            assert successful_syncs(sandbox, company) == 1  # the rerun looked before it called
            assert worker.proc is not None and worker.proc.poll() is None
        finally:
            pool.stop()


def test_a_claim_left_for_a_company_codat_deleted_is_released(
    client: httpx.Client, store: redis.Redis, sandbox: SandboxControl, workers: Workers
) -> None:
    """The first data/all answers 503; the company is then deleted at Codat and its
    connection.deleted arrives: the retry finds no history to look at (404) and no connection
    to sync, so the claim is released, and nothing is dead-lettered."""
    company, connection, _ = first_call_fails(client, sandbox, workers)
    with sandbox.api() as api:
        assert api.delete(f"/companies/{company}").status_code == 204
    deleted = connection_event("connection.deleted", company, connection, generated=iso_at(-5))
    deliver(client, deleted)
    wait_until(
        lambda: idle(store) and state(client, connection)["initialSync"] is None, timeout=30, what="claim released"
    )
    assert state(client, connection)["status"] == "Deleted"
    assert client.get("/ops/dead-letters", headers=OPS).json()["deadLetters"] == []
    assert successful_syncs(sandbox, company) == 0
