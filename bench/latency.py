"""Open-loop latency: requests go out at a fixed rate whatever the answers do, and each one's
latency is counted from the time it was *scheduled* to go, so that a server that falls behind is
charged for the queue it builds (no coordinated omission).

- ack: one web process, Redis on loopback, signed `connection.connected` deliveries at 1,000,
  2,000 and 4,000 a second: p50/p99/p99.9 of the answer, the web's CPU per delivery, its RSS, and
  Redis memory per queued event.
- webhook -> Codat: web + one worker + the sandbox; each delivery is the first link of a
  connection the sandbox has as Linked, and the sandbox logs the `at` time of the `data/all` it
  causes. Redis on loopback and ~2 ms away; also the idle worker's CPU before the load.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import orjson
from standardwebhooks import Webhook

from bench import load, redisstats
from bench.stack import Stack, rss_mb
from sandbox import catalogue
from service.stores import keys

CONNECTED = next(b for _, t, b in catalogue.examples() if t == "connection.connected")


def signed(secret: str, port: int, bodies: list[bytes]) -> list[bytes]:
    webhook = Webhook(secret)
    now = datetime.now(tz=UTC)
    out = []
    for body in bodies:
        msg_id = f"msg_{uuid.uuid4().hex}"
        headers = {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": webhook.sign(msg_id, now, body.decode()),
            "content-type": "application/json",
        }
        out.append(load.build_request("127.0.0.1", port, "/webhooks/codat", body, headers))
    return out


def connected_body(company: str | None = None, connection: str | None = None) -> bytes:
    body = orjson.loads(orjson.dumps(CONNECTED))
    body["id"] = str(uuid.uuid4())
    body["generatedDate"] = "2026-01-01T00:00:00.000Z"
    body["payload"]["referenceCompany"]["id"] = company or str(uuid.uuid4())
    body["payload"]["connection"]["id"] = connection or str(uuid.uuid4())
    return orjson.dumps(body)


async def open_loop(port: int, requests: list[bytes], rate: float, connections: int = 64) -> dict:
    """Send `requests` at `rate` a second. Returns latencies (s, from the scheduled time), the
    statuses, and each request's scheduled wall-clock time."""
    clock = time.perf_counter  # uvloop's loop.time() is cached per iteration, in ms
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while (item := await queue.get()) is not None:
                due, request = item
                writer.write(request)
                status = await load.read_response(reader)
                latencies.append(clock() - due)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    tasks = [asyncio.create_task(connection()) for _ in range(connections)]
    await asyncio.sleep(0.2)  # connected
    start = clock() + 0.01
    wall_start = time.time() + (start - clock())
    scheduled = []
    for number, request in enumerate(requests):
        due = start + number / rate
        delay = due - clock()
        if delay > 0.0002:
            await asyncio.sleep(delay)
        queue.put_nowait((due, request))
        scheduled.append(wall_start + number / rate)
    for _ in tasks:
        queue.put_nowait(None)
    await asyncio.gather(*tasks)
    return {"latencies": latencies, "statuses": statuses, "scheduled": scheduled}


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    if not ordered:
        return {"p50": float("nan"), "p99": float("nan"), "p999": float("nan")}

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000

    return {"p50": at(0.5), "p99": at(0.99), "p999": at(0.999)}


def ack(stack: Stack, rate: int, seconds: float) -> dict:
    stack.reset()
    web, port = stack.web("loopback")
    try:
        warm = signed(stack.secret, port, [connected_body() for _ in range(500)])
        asyncio.run(open_loop(port, warm, 500))
        stack.store.flushall()
        requests = signed(stack.secret, port, [connected_body() for _ in range(int(rate * seconds))])
        server_before = redisstats.snapshot(stack.store)
        memory_before = server_before.memory
        cpu_before = web.cpu()
        result = asyncio.run(open_loop(port, requests, rate))
        cpu = web.cpu() - cpu_before
        server = redisstats.delta(server_before, redisstats.snapshot(stack.store))
        queued = stack.store.zcard(keys.QUEUE_NAME)
        if result["statuses"] != {202: len(requests)} or queued != len(requests):
            raise RuntimeError(f"ack at {rate}/s: answers {result['statuses']}, {queued} queued")
        memory = stack.store.info("memory")["used_memory"] - memory_before
        return {
            **percentiles(result["latencies"]),
            "cpu_us": cpu / len(requests) * 1e6,
            "rss_mb": rss_mb(web.pid),
            "redis_bytes_per_event": memory / queued,
            **server.per_event(len(requests)),
        }
    finally:
        web.stop()


def codat(stack: Stack, network: str, rate: int, seconds: float, idle_seconds: float = 3.0) -> dict:
    stack.reset()
    count = int(rate * seconds)
    pairs = [(str(uuid.uuid4()), str(uuid.uuid4())) for _ in range(count)]
    stack.seed_linked(pairs)
    web, port = stack.web(network)
    workers = stack.workers("service", 1, network)
    try:
        worker = workers[0]
        idle_before = worker.cpu()
        time.sleep(idle_seconds)
        idle_cpu = (worker.cpu() - idle_before) / idle_seconds * 100
        requests = signed(stack.secret, port, [connected_body(c, n) for c, n in pairs])
        result = asyncio.run(open_loop(port, requests, rate))
        due = {company: at for (company, _), at in zip(pairs, result["scheduled"], strict=True)}
        deadline = time.monotonic() + 60
        while True:
            calls = {c["companyId"]: c["at"] for c in stack.calls() if c["path"].endswith("/data/all")}
            if len(calls) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        latencies = [calls[company] - at for company, at in due.items() if company in calls]
        return {**percentiles(latencies), "idle_cpu_pct": idle_cpu, "calls": len(calls), "expected": count}
    finally:
        for worker in workers:
            worker.stop()
        web.stop()
