"""The logs of a full run: every line of the service's processes is one JSON object, and no
credential appears in any of them, in any of the forms it travels in."""

from __future__ import annotations

import base64

import httpx
import orjson
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
