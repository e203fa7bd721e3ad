"""Worker drain: how fast 1 and 2 workers empty a backlog, the service's worker beside the floor
(arq's stock Worker running a job that does nothing), Redis on loopback and ~2 ms away.

The backlog is the issue's: 20% `connection.connected` for new connections that the sandbox has
as Linked (each one is a first link: a compare-and-set, a claim, a `data/all` call, a settle),
80% `read.completed`. Jobs are written exactly as the web process writes them (same normaliser,
same job format), into a staging set, and appear in arq's queue at once (one ZUNIONSTORE) once
the workers are polling; the run ends when the queue is empty. Worker CPU is read from /proc.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from bench import redisstats
from bench.stack import Stack
from sandbox import catalogue
from service.core import events
from service.stores import keys

STAGING = "bench:staging"
# The last run's server-side delta and events (python -m bench.profile prints it whole).
last_delta: tuple[redisstats.Delta, int] | None = None
EXAMPLES = {t: b for _, t, b in catalogue.examples() if t in ("connection.connected", "read.completed")}


@dataclass
class Backlog:
    pairs: list[tuple[str, str]]
    jobs: list[tuple[str, bytes]]


def backlog(size: int) -> Backlog:
    connected, completed = EXAMPLES["connection.connected"], EXAMPLES["read.completed"]
    pairs = [(str(uuid.uuid4()), str(uuid.uuid4())) for _ in range(max(1, size // 5))]
    now = int(time.time() * 1000)
    jobs = []
    for number in range(size):
        company, connection = pairs[(number // 5) % len(pairs)]
        if number % 5 == 0:
            body = orjson.loads(orjson.dumps(connected))
            body["payload"]["connection"]["id"] = connection
            body["generatedDate"] = "2026-01-01T00:00:00.000Z"
        else:
            body = orjson.loads(orjson.dumps(completed))
            body["payload"]["dataTypes"][0]["connectionId"] = connection
            body["payload"]["dataTypes"][0]["dataType"] = ("invoices", "bills", "customers", "suppliers")[number % 4]
        body["payload"]["referenceCompany"]["id"] = company
        body["id"] = str(uuid.uuid4())
        message_id = f"msg_{uuid.uuid4().hex}"
        event = events.parse(orjson.dumps(body), message_id, now)
        jobs.append((keys.event_job_id(message_id), keys.serialize_event_job(event.to_dict(), now)))
    return Backlog(pairs, jobs)


def stage(stack: Stack, work: Backlog) -> None:
    pipe = stack.store.pipeline(transaction=False)
    now = int(time.time() * 1000)
    for number, (job_id, job) in enumerate(work.jobs):
        pipe.set(keys.job_key(job_id), job, px=keys.JOB_TTL_MS)
        pipe.zadd(STAGING, {job_id: now - len(work.jobs) + number})
    pipe.execute()


def run(
    stack: Stack,
    kind: str,
    count: int,
    network: str,
    size: int,
    max_seconds: float,
    staged: Callable[[], object] | None = None,
) -> dict:
    """`staged`: called once the backlog is staged, before the workers start (bench.profile
    starts its slow log there, so that the staging's own writes are not in it)."""
    stack.reset()
    work = backlog(size)
    if kind == "service":
        stack.seed_linked(work.pairs)
    stage(stack, work)
    if staged is not None:
        staged()
    workers = stack.workers(kind, count, network)
    polls = 0
    try:
        server_before = redisstats.snapshot(stack.store)
        cpu_before = sum(w.cpu() for w in workers)
        started = time.perf_counter()
        stack.store.zunionstore(keys.QUEUE_NAME, [STAGING])
        stack.store.delete(STAGING)
        left = size
        while left and time.perf_counter() - started < max_seconds:
            time.sleep(0.005)
            left = stack.store.zcard(keys.QUEUE_NAME)
            polls += 1
        elapsed = time.perf_counter() - started
        cpu = sum(w.cpu() for w in workers) - cpu_before
        server = redisstats.delta(
            server_before, redisstats.snapshot(stack.store), {"zunionstore": 1, "del": 1, "zcard": polls}
        )
    finally:
        for worker in workers:
            worker.stop()
    done = size - left
    result = {"rate": done / elapsed, "cpu_us": cpu / max(1, done) * 1e6, "drained": left == 0, "done": done}
    result.update(server.per_event(done))
    global last_delta
    last_delta = (server, done)
    if kind == "service":
        calls = [c for c in stack.calls() if c["path"].endswith("/data/all")]
        result["codat_calls"] = len(calls)
        if left == 0 and len(calls) != len(work.pairs):
            raise RuntimeError(f"{len(calls)} data/all calls for {len(work.pairs)} first links")
        letters = stack.store.hlen(keys.DEAD_LETTERS)
        if letters:
            raise RuntimeError(f"{letters} dead letters in a drain run")
    return result
