"""What happens when Redis goes away, and when the process is misconfigured."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import redis

from tests.support import ROOT, catalogue_examples, own_valkey_and_web, queued_events, service_env, sign

CONNECTED = next(body for _, t, body in catalogue_examples() if t == "connection.connected")


def test_redis_down_is_503_with_retry_after_and_codats_retry_is_accepted(tmp_path: Path) -> None:
    with own_valkey_and_web(tmp_path) as (server, web):
        body = orjson.dumps(CONNECTED)
        headers = sign(body)
        server.stop()
        # Codat counts a delivery failed after 15 s: the answer must come well before.
        response = httpx.post(f"{web.url}/webhooks/codat", content=body, headers=headers, timeout=10)
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) > 0
        assert httpx.get(f"{web.url}/readyz", timeout=10).status_code == 503
        assert any(line["event"] == "webhook.enqueue_failed" and line["level"] == "error" for line in web.logs())

        server.start()  # same port, same data folder
        retry = httpx.post(f"{web.url}/webhooks/codat", content=body, headers=headers, timeout=10)
        assert retry.status_code == 202
        assert httpx.get(f"{web.url}/readyz", timeout=10).status_code == 200
        store = redis.Redis(host=server.host, port=server.port)
        assert [e["message_id"] for e in queued_events(store)] == [headers["webhook-id"]]
        store.close()


def test_accepted_events_survive_a_redis_restart(tmp_path: Path) -> None:
    with own_valkey_and_web(tmp_path) as (server, web):
        body = orjson.dumps(CONNECTED)
        headers = sign(body)
        assert httpx.post(f"{web.url}/webhooks/codat", content=body, headers=headers).status_code == 202
        server.stop()
        server.start()
        store = redis.Redis(host=server.host, port=server.port)
        assert len(queued_events(store)) == 1  # the AOF brought it back
        store.close()
        # and the dedup record with it: Codat's late retry is still a duplicate
        assert httpx.post(f"{web.url}/webhooks/codat", content=body, headers=headers, timeout=10).status_code == 200


def _web_exits(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "web"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_web_refuses_to_start_without_secrets() -> None:
    env = service_env("redis://127.0.0.1:1")
    del env["CODAT_WEBHOOK_SECRETS"]
    result = _web_exits(env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "CODAT_WEBHOOK_SECRETS" in result.stderr


def test_web_refuses_a_malformed_secret_without_echoing_it() -> None:
    bad = "whsec_not*base64*at*all"
    result = _web_exits(service_env("redis://127.0.0.1:1", CODAT_WEBHOOK_SECRETS=bad))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "entry 1" in result.stderr
    assert bad not in result.stderr


def test_web_refuses_to_start_without_redis_url() -> None:
    env = service_env("")
    result = _web_exits(env)
    assert result.returncode == 2 and "REDIS_URL" in result.stderr
