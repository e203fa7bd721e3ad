"""SIGTERM with work in flight, with real processes: nothing accepted is lost."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import orjson
import redis

from tests.support import (
    SandboxControl,
    Workers,
    connection_event,
    deliver,
    own_valkey_and_web,
    queued_events,
    sign,
    wait_until,
)


def test_web_sigterm_during_a_burst_loses_nothing_it_accepted(tmp_path: Path) -> None:
    with own_valkey_and_web(tmp_path) as (server, web):
        deliveries = []
        for number in range(600):
            body = orjson.dumps(connection_event("connection.connected", f"c{number}", f"k{number}"))
            deliveries.append((body, sign(body)))
        answered: list[tuple[str, int]] = []

        async def burst() -> None:
            async with httpx.AsyncClient(base_url=web.url, timeout=10) as http:
                queue = iter(deliveries)

                async def sender() -> None:
                    for body, headers in queue:
                        try:
                            response = await http.post("/webhooks/codat", content=body, headers=headers)
                        except httpx.TransportError:
                            continue  # refused while stopping: Codat would retry it
                        answered.append((headers["webhook-id"], response.status_code))
                        if len(answered) == 150:
                            assert web.proc is not None
                            web.proc.send_signal(signal.SIGTERM)

                await asyncio.gather(*(sender() for _ in range(16)))

        asyncio.run(burst())
        # uvicorn re-raises the signal once its graceful shutdown is done
        assert web.proc is not None and web.proc.wait(30) in (0, -signal.SIGTERM)
        assert any(line["event"].startswith("Finished server process") for line in web.logs())
        accepted = {msg_id for msg_id, status in answered if status == 202}
        assert len(accepted) >= 150
        assert not [status for _, status in answered if status >= 500]
        store = redis.Redis(host=server.host, port=server.port)
        queued = {event["message_id"] for event in queued_events(store)}
        store.close()
        assert accepted <= queued  # every 202 is in Redis


def test_worker_sigterm_lets_the_running_job_finish(
    client: httpx.Client, store: redis.Redis, sandbox: SandboxControl, workers: Workers
) -> None:
    sandbox.seed("c-stop", "k-stop", "Linked")
    sandbox.faults("c-stop", {"delay": 2, "times": 1, "match": "/data/all"})
    [worker] = workers.start(1)
    deliver(client, connection_event("connection.connected", "c-stop", "k-stop"))
    wait_until(lambda: sandbox.calls("c-stop", "/data/all"), what="call in flight")
    assert worker.proc is not None
    stopped_at = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(40) == 0
    assert time.monotonic() - stopped_at >= 1.0  # it waited for the call to come back
    assert store.hget("codat:connection:k-stop", "initialSync") == b"requested"
    assert [c["status"] for c in sandbox.calls("c-stop", "/data/all")] == [204]
    assert store.zcard("arq:queue") == 0


def test_worker_sigterm_hands_back_a_job_that_outlasts_the_wait(
    client: httpx.Client, store: redis.Redis, sandbox: SandboxControl, workers: Workers
) -> None:
    sandbox.seed("c-back", "k-back", "Linked")
    sandbox.faults("c-back", {"delay": 30, "times": 1, "match": "/data/all"})
    [first] = workers.start(1, WORKER_SHUTDOWN_WAIT="1")
    deliver(client, connection_event("connection.connected", "c-back", "k-back"))
    wait_until(lambda: sandbox.calls("c-back", "/data/all"), what="call in flight")
    assert first.proc is not None
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(20) == 0
    assert store.zcard("arq:queue") == 1  # handed back, not lost
    workers.start(1)
    wait_until(
        lambda: store.hget("codat:connection:k-back", "initialSync") == b"requested",
        timeout=40,
        what="the handed-back job to finish",
    )
    # the cut-short call had reached Codat: the new run found it in data/history and did not repeat it
    assert len(sandbox.calls("c-back", "/data/all")) == 1
