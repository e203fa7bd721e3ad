"""Lifecycle events (docs/integrator/lifecycle-events.md): each appears exactly when its state change does,
once; stale, duplicate and replayed deliveries emit nothing; the outbox is atomic with the
change; the docs' consumer sees each once across two consumers and takes over a dead one's;
CODAT_HANDLERS functions run once each, and a failing one is retried, dead-lettered and replayed
on its own. Real Valkey, web, arq workers and the sandbox."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import orjson
import redis

from tests.support import (
    OPS,
    ROOT,
    SandboxControl,
    Workers,
    connection_event,
    deliver,
    example,
    idle,
    iso_at,
    linked_connection,
    state,
    sync_requested,
    wait_until,
)

STREAM = "codat:lifecycle"
SCHEMA = json.loads((ROOT / "service" / "core" / "lifecycle.schema.json").read_text())


def events(store: redis.Redis, connection: str | None = None, company: str | None = None) -> list[dict[str, Any]]:
    found = [orjson.loads(fields[b"event"]) for _, fields in store.xrange(STREAM)]
    found = [event for event in found if "type" in event]  # not the test's own stand-ins
    for event in found:
        jsonschema.validate(event, SCHEMA)
    return [e for e in found if connection in (None, e.get("connectionId")) and company in (None, e.get("companyId"))]


def types(store: redis.Redis, connection: str) -> list[str]:
    return [event["type"] for event in events(store, connection)]


def read_completed(company: str, connection: str, status: str = "Complete", generated: str | None = None) -> dict:
    body = example("read.completed")
    body["id"] = f"rc-{company}-{status}"
    body["generatedDate"] = generated or iso_at()
    body["payload"]["referenceCompany"]["id"] = company
    body["payload"]["dataTypes"] = [{"connectionId": connection, "dataType": "invoices", "status": status}]
    return body


def test_each_change_emits_its_event_once_and_nothing_else_does(
    client: httpx.Client, store: redis.Redis, sandbox: SandboxControl, workers: Workers
) -> None:
    company, connection = linked_connection(sandbox)
    workers.start(1)
    connected = connection_event("connection.connected", company, connection, generated=iso_at(-50))
    assert deliver(client, connected, msg_id="msg_lifecycle_first").status_code == 202
    assert deliver(client, connected, msg_id="msg_lifecycle_first").status_code == 200  # its duplicate
    assert deliver(client, connected).status_code == 202  # replayed under a new webhook id
    wait_until(lambda: sync_requested(client, connection) and idle(store), what="linked and synced")
    assert types(store, connection) == ["connection.linked", "sync.initial_requested"]
    history = [
        ("connection.disconnected", "Unlinked", -40, "connection.unlinked"),
        ("connection.reconnected", None, -30, "connection.relinked"),
        ("connection.disconnected", "Deauthorized", -20, "connection.deauthorized"),
        ("connection.deleted", None, -10, "connection.deleted"),
    ]
    for event_type, status, at, _ in history:
        deliver(client, connection_event(event_type, company, connection, status, iso_at(at)))
        wait_until(lambda: idle(store), what=f"{event_type} processed")
    # late and stale: nothing changes, nothing is told
    deliver(client, connection_event("connection.reconnected", company, connection, generated=iso_at(-45)))
    wait_until(lambda: idle(store), what="stale event processed")
    assert types(store, connection) == [
        "connection.linked",
        "sync.initial_requested",
        *(kind for *_, kind in history),
    ]
    linked, requested = events(store, connection)[:2]
    assert linked["occurredAt"].startswith(connected["generatedDate"][:19]) and linked["webhookId"]
    assert requested["requestedBy"] == "service" and requested["recovered"] is False
    assert len({e["id"] for e in events(store)}) == len(events(store))  # ids are unique


def test_sync_outcomes_and_the_rate_limit_pause_are_told_once(
    client: httpx.Client, store: redis.Redis, sandbox: SandboxControl, workers: Workers
) -> None:
    company, connection = linked_connection(sandbox)
    workers.start(1)
    done = read_completed(company, connection)
    deliver(client, done)
    deliver(client, done)  # replayed under a new webhook id: the same Codat event
    deliver(client, read_completed(company, connection, "FetchError", iso_at(+1)))
    deliver(client, read_completed(company, connection, "Complete", iso_at(-60)) | {"id": "older"})  # stale
    reached = example("client.rateLimit.reached")
    reached["payload"]["expiryDate"] = iso_at(+30)
    for body in (reached, dict(reached, id="again"), example("client.rateLimit.reset")):
        deliver(client, body)
        wait_until(lambda: idle(store), what="processed")
    deliver(client, dict(example("client.rateLimit.reset"), id="reset-twice"))
    deliver(client, dict(reached, id="reached-late"))  # older than the reset: changes nothing
    wait_until(lambda: idle(store), what="processed")
    assert not store.exists("codat:rate-limit:paused-until")
    sync = [(e["type"], e["status"]) for e in events(store, company=company)]
    assert sync == [("sync.completed", "Complete"), ("sync.failed", "FetchError")]
    # each outcome logged once it is known whether it was kept (with the job's end), in the
    # job's context, after the job's own line: the replay and the older one as stale
    lines = [line for line in workers.logs() if line.get("company_id") == company]
    told = [(line["event"], line["stale"]) for line in lines if line["event"].startswith("sync.")]
    assert sorted(told) == [("sync.completed", False), *[("sync.completed", True)] * 2, ("sync.failed", False)]
    for line in lines:
        if line["event"].startswith("sync."):
            job = [i for i, other in enumerate(lines) if other.get("job_id") == line["job_id"]]
            assert lines[job[-1]] is line and lines[job[-2]]["event"] == "event.processed"
    assert [e["type"] for e in events(store, company="")] == ["rate_limit.paused", "rate_limit.resumed"]


def test_the_outbox_and_the_state_change_are_one(
    client: httpx.Client, store: redis.Redis, sandbox: SandboxControl, workers: Workers
) -> None:
    """The stream cannot be written (it is not a stream): the state must not change either, and
    the job is retried, not lost; once the stream can be written, both happen together."""
    company, connection = linked_connection(sandbox)
    store.set(STREAM, "not a stream")
    workers.start(1)
    deliver(client, connection_event("connection.connected", company, connection))
    wait_until(lambda: any(line["event"] == "job.deferred" for line in workers.logs()), what="a failed try")
    assert state(client, connection) is None  # no change without its event
    store.delete(STREAM)
    wait_until(lambda: sync_requested(client, connection), timeout=30, what="retried")
    assert types(store, connection) == ["connection.linked", "sync.initial_requested"]


def consumer_code() -> str:
    section = (ROOT / "docs" / "integrator" / "lifecycle-events.md").read_text()
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)  # type: ignore[union-attr]


def start_consumer(redis_url: str, name: str, tmp_path: Path, **env: str) -> tuple[subprocess.Popen[bytes], Path]:
    script, out = tmp_path / "consumer.py", tmp_path / f"{name}.out"
    script.write_text(consumer_code())
    full_env = {**os.environ, "REDIS_URL": redis_url, "CONSUMER": name, **env}
    proc = subprocess.Popen(
        [sys.executable, str(script)], env=full_env, stdout=out.open("wb"), stderr=subprocess.STDOUT
    )
    return proc, out


def printed(out: Path) -> list[str]:
    return [json.loads(line)["id"] for line in out.read_text().splitlines() if line.startswith("{")]


def test_the_readme_consumer_sees_each_event_once_and_takes_over_a_dead_one(
    client: httpx.Client, store: redis.Redis, valkey: Any, sandbox: SandboxControl, workers: Workers, tmp_path: Path
) -> None:
    store.xgroup_create(STREAM, "my-app", id="0", mkstream=True)
    # a consumer that read entries and died before XACK
    for _ in range(3):
        store.xadd(STREAM, {"type": "t", "company": "", "event": orjson.dumps({"id": f"abandoned-{_}"})})
    store.xreadgroup("my-app", "dead", {STREAM: ">"}, count=10)
    time.sleep(0.6)
    consumers = [start_consumer(valkey.connection_url, f"c{i}", tmp_path, CLAIM_IDLE_MS="500") for i in (1, 2)]
    try:
        workers.start(1)
        connections = [linked_connection(sandbox) for _ in range(10)]
        for company, connection in connections:
            deliver(client, connection_event("connection.connected", company, connection))
        wait_until(lambda: idle(store) and len(events(store)) == 20, timeout=30, what="20 events derived")
        wanted = {e["id"] for e in events(store)} | {f"abandoned-{i}" for i in range(3)}
        wait_until(lambda: sum(len(printed(out)) for _, out in consumers) >= len(wanted), what="all consumed")
        seen = [event_id for _, out in consumers for event_id in printed(out)]
        assert sorted(seen) == sorted(wanted)  # each once, across the two
        assert all(printed(out) for _, out in consumers)  # and both took part
    finally:
        for proc, _ in consumers:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)


def calls(path: Path) -> list[tuple[str, str]]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [(call["handler"], call["type"]) for call in map(json.loads, lines)]


def test_handlers_run_once_and_a_failing_one_is_dead_lettered_and_replayed_alone(
    client: httpx.Client, store: redis.Redis, sandbox: SandboxControl, workers: Workers, tmp_path: Path
) -> None:
    record = tmp_path / "calls.jsonl"
    env = {
        "CODAT_HANDLERS": "tests.lifecycle_handlers",
        "CODAT_HANDLER_MAX_TRIES": "2",
        "HANDLER_CALLS_FILE": str(record),
    }
    workers.start(2, **env)
    wait_until(lambda: sum(line["event"] == "handlers.loaded" for line in workers.logs()) == 2, what="handlers on")
    company, connection = linked_connection(sandbox)
    deliver(client, connection_event("connection.connected", company, connection))
    letters = lambda: client.get("/ops/dead-letters", headers=OPS).json()["deadLetters"]  # noqa: E731
    wait_until(lambda: letters(), timeout=30, what="the failing handler dead-lettered")
    [letter] = letters()
    assert letter["reason"] == "handler_failed" and letter["event"]["handler"].endswith("always_fails")
    assert sorted(calls(record)) == sorted(
        [
            ("mark_onboarded", "connection.linked"),
            ("always_fails", "connection.linked"),
            ("always_fails", "connection.linked"),
        ]
    )
    assert len(sandbox.calls(company, "/data/all")) == 1  # the state machine ran once
    assert client.post(f"/ops/dead-letters/{letter['id']}/replay", headers=OPS).status_code == 202
    # it fails again (twice, as configured) and is a dead letter again: the replay ran only it
    wait_until(lambda: letters() and idle(store), timeout=30, what="the replay ran")
    assert calls(record)[3:] == [("always_fails", "connection.linked")] * 2
    assert len(sandbox.calls(company, "/data/all")) == 1
    assert state(client, connection)["initialSync"] == "requested"
    lines = [line for line in workers.logs() if line["event"].startswith("handler.")]
    assert {line["handler"] for line in lines} == {
        "tests.lifecycle_handlers.mark_onboarded",
        "tests.lifecycle_handlers.always_fails",
    }
