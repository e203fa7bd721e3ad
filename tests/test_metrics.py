"""GET /metrics of the web process, and each worker's own metrics port."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import orjson
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.support import (
    SandboxControl,
    Workers,
    connection_event,
    deliver,
    free_port,
    own_valkey_and_web,
    sign,
    wait_until,
)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def test_web_metrics_count_deliveries_and_read_the_queue(client: httpx.Client, store: redis.Redis) -> None:
    before = samples(client.get("/metrics").text)
    body = orjson.dumps(connection_event("connection.connected", "c1", "k1"))
    headers = sign(body)
    client.post("/webhooks/codat", content=body, headers=headers)
    client.post("/webhooks/codat", content=body, headers=headers)
    client.post("/webhooks/codat", content=body, headers={})
    store.hset("codat:dead-letters", "x", b"{}")
    after = samples(client.get("/metrics").text)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    kind = {"event_type": "connection.connected", "reason": ""}
    assert delta("codat_webhook_deliveries_total", outcome="accepted", **kind) == 1
    assert delta("codat_webhook_deliveries_total", outcome="duplicate", **kind) == 1
    assert delta("codat_webhook_deliveries_total", outcome="rejected", reason="missing_headers", event_type="") == 1
    assert delta("codat_webhook_ack_seconds_count") == 3
    assert value(after, "codat_queue_depth") == 1  # no worker is running
    assert value(after, "codat_dead_letters") == 1
    assert value(after, "codat_worker_polling") == 0
    assert value(after, "codat_redis_up") == 1


def test_oldest_job_age_grows_while_nobody_works(client: httpx.Client, store: redis.Redis) -> None:
    body = orjson.dumps(connection_event("connection.connected", "c1", "k1"))
    client.post("/webhooks/codat", content=body, headers=sign(body))
    time.sleep(1.1)
    age = value(samples(client.get("/metrics").text), "codat_queue_oldest_job_age_seconds")
    assert 1.0 <= age < 30


def test_worker_metrics_count_jobs_and_codat_calls(
    client: httpx.Client, store: redis.Redis, sandbox: SandboxControl, workers: Workers
) -> None:
    sandbox.seed("c-metrics", "k-metrics", "Linked")
    port = free_port()
    workers.start(1, WORKER_METRICS_PORT=str(port))
    deliver(client, connection_event("connection.connected", "c-metrics", "k-metrics"))

    def scraped() -> dict:
        try:
            return samples(httpx.get(f"http://127.0.0.1:{port}/metrics").text)
        except httpx.TransportError:
            return {}

    metrics = wait_until(
        lambda: (
            (m := scraped())
            and value(m, "codat_jobs_total", route="connection", outcome="initial_sync_requested")
            and m
        ),
        what="job counted",
    )
    assert value(metrics, "codat_api_calls_total", operation="refresh_all", status="204") == 1
    assert value(metrics, "codat_job_duration_seconds_count", route="connection") == 1
    assert value(metrics, "codat_api_call_seconds_count", operation="refresh_all") == 1
    polling = wait_until(
        lambda: value(samples(client.get("/metrics").text), "codat_worker_polling"), what="worker heartbeat"
    )
    assert polling == 1


SERVICE_STATE = (
    "codat_queue_depth",
    "codat_queue_oldest_job_age_seconds",
    "codat_dead_letters",
    "codat_worker_polling",
    "codat_rate_limit_paused",
)


def test_without_redis_the_service_wide_gauges_are_absent_not_stale(tmp_path: Path) -> None:
    with own_valkey_and_web(tmp_path) as (server, web):
        body = orjson.dumps(connection_event("connection.connected", "c1", "k1"))
        httpx.post(f"{web.url}/webhooks/codat", content=body, headers=sign(body))
        up = samples(httpx.get(f"{web.url}/metrics").text)
        assert value(up, "codat_redis_up") == 1 and value(up, "codat_queue_depth") == 1
        server.stop()
        down = samples(httpx.get(f"{web.url}/metrics", timeout=30).text)
        assert down[("codat_redis_up", ())] == 0
        names = {name for name, _ in down}
        assert not names & set(SERVICE_STATE), "a gauge read from Redis was reported without Redis"
        assert "codat_webhook_deliveries_total" in names  # the process's own metrics stay
        server.start()
        back = samples(httpx.get(f"{web.url}/metrics", timeout=30).text)
        assert value(back, "codat_redis_up") == 1 and back[("codat_queue_depth", ())] == 1
