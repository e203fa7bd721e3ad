"""The logs of a full run: every line of the service's processes is one JSON object, and no
credential appears in any of them, in any of the forms it travels in."""

from __future__ import annotations

import base64
import inspect
import logging

import arq.worker
import httpx
import orjson
import pytest
import redis

from tests.support import (
    LEGACY_AUTH,
    OLD_SECRET,
    OPS_TOKEN,
    SANDBOX_KEY,
    SECRET,
    SandboxControl,
    Web,
    Workers,
    connection_event,
    deliver,
    legacy_status_changed,
    wait_until,
)
from workers.worker import _PER_JOB_LINES

OPS = {"Authorization": f"Bearer {OPS_TOKEN}"}
CREDENTIALS = {
    "signing secret": SECRET,
    "signing secret, bare": SECRET.removeprefix("whsec_"),
    "previous signing secret": OLD_SECRET,
    "previous signing secret, bare": OLD_SECRET.removeprefix("whsec_"),
    "legacy Authorization": LEGACY_AUTH,
    "ops token": OPS_TOKEN,
    "API key": SANDBOX_KEY,
    "API key, as sent": base64.b64encode(SANDBOX_KEY.encode()).decode(),
}


def test_a_full_run_logs_only_json_and_no_credential(
    web: Web, client: httpx.Client, store: redis.Redis, sandbox: SandboxControl, workers: Workers
) -> None:
    [worker] = workers.start(1)
    with sandbox.api() as codat:
        consumer = codat.post("/webhooks", json={"url": f"{web.url}/webhooks/codat"}).json()
        try:
            company = codat.post("/companies", json={"name": "Platypus Properties"}).json()
            sandbox.http.post(f"/_sandbox/companies/{company['id']}/link")
            wait_until(lambda: sandbox.deliveries("read.completed.initial"), what="the quick-start")
        finally:
            codat.delete(f"/webhooks/{consumer['id']}")
    legacy = orjson.dumps(legacy_status_changed("c-logs", "k-logs", "Linked", "PendingAuth"))
    client.post("/webhooks/codat", content=legacy, headers={"authorization": LEGACY_AUTH})
    client.post("/webhooks/codat", content=legacy, headers={"authorization": LEGACY_AUTH + "-wrong"})
    client.post("/webhooks/codat", content=legacy, headers={"authorization": f"Basic {SECRET}"})
    sandbox.seed("c-rejected", "k-rejected", "Linked")
    sandbox.faults("c-rejected", {"status": 403, "times": 1, "match": "/data/all"})
    deliver(client, connection_event("connection.connected", "c-rejected", "k-rejected"))
    wait_until(lambda: client.get("/ops/dead-letters", headers=OPS).json()["count"], what="a dead letter")
    client.get("/ops/dead-letters", headers={"Authorization": f"Bearer {OPS_TOKEN}x"})
    wait_until(lambda: any(line["event"] == "job.dead_lettered" for line in worker.logs()), what="logged")

    for process in (web, worker):
        text = process.log_path.read_text()
        lines = [line for line in text.splitlines() if line.strip()]
        assert len(lines) > 10
        for line in lines:
            entry = orjson.loads(line)  # fails on any line that is not JSON
            assert isinstance(entry, dict) and "event" in entry and "level" in entry, line
        for name, value in CREDENTIALS.items():
            assert value not in text, f"the {name} reached the log of {process.args[0]}"
    # arq's own lines come through, but for its two a job ('→ job(args)', '← job ● result'):
    # `event.processed` says it once, with the ids.
    said = [orjson.loads(line)["event"] for line in worker.log_path.read_text().splitlines() if line.strip()]
    assert any(event.startswith("Starting worker for") for event in said)
    assert "event.processed" in said
    assert not [event for event in said if " → " in event or " ← " in event]


def test_arq_per_job_lines_are_dropped_before_a_record_is_made(monkeypatch: pytest.MonkeyPatch) -> None:
    arq_log = logging.getLogger("arq.worker")
    made: list[object] = []
    make = arq_log.makeRecord
    monkeypatch.setattr(arq_log, "makeRecord", lambda *args, **kw: made.append(args[4]) or make(*args, **kw))
    monkeypatch.setattr(arq_log, "handle", lambda record: None)
    level = arq_log.level
    arq_log.setLevel(logging.INFO)
    try:
        arq_log.info("%6.2fs → %s(%s)%s", 0.01, "event:1:process_event", "{...}", "")
        arq_log.info("%6.2fs ← %s ● %s", 0.02, "event:1:process_event", "")
        arq_log.info("%6.2fs ↻ %s retrying job in %0.2fs", 0.02, "event:1:process_event", 5.0)
        arq_log.warning("%6.2fs → %s", 0.01, "not at info")
    finally:
        arq_log.setLevel(level)
    assert made == ["%6.2fs ↻ %s retrying job in %0.2fs", "%6.2fs → %s"]
    # The formats are arq's own: an arq that words them otherwise fails here, not in production.
    source = inspect.getsource(arq.worker)
    assert all(f"logger.info('{line}" in source for line in _PER_JOB_LINES)
