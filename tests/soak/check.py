"""After the run: wait for the queue to drain, read back what happened (the sandbox's call log,
the service's /ops routes, every log line) and compare it with the model."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis

from tests.soak.generator import History
from tests.soak.model import Truth
from tests.soak.procs import OPS_TOKEN, Stack, secret_forms

# The service's lifecycle events (docs/integrator/lifecycle-events.md), read as any consumer would.
LIFECYCLE_STREAM = "codat:lifecycle"


def _idle(store: redis.Redis) -> bool:
    try:
        if store.zcard("arq:queue"):
            return False
        return next(store.scan_iter(match="arq:in-progress:*", count=1000), None) is None
    except redis.RedisError:
        return False


async def wait_drained(redis_url: str, within: float, settle: float = 2.0) -> float | None:
    """Seconds until the queue is empty and no job is running, held for `settle` seconds (a job
    deferred by arq goes back on the queue, and a killed worker's job reappears once its
    in-progress mark expires); None if that never happened `within` seconds."""
    store = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    started = time.monotonic()
    idle_since: float | None = None
    try:
        while time.monotonic() - started < within:
            if await asyncio.to_thread(_idle, store):
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since >= settle:
                    return idle_since - started
            else:
                idle_since = None
            await asyncio.sleep(0.25)
        return None
    finally:
        store.close()


@dataclass
class Observed:
    states: dict[str, dict[str, Any] | None]  # connectionId -> /ops/connections answer (None: 404)
    calls: list[dict[str, Any]]
    dead_letters: list[dict[str, Any]]
    dead_letter_count: int
    lifecycle: list[dict[str, Any]] = field(default_factory=list)  # the service's lifecycle stream
    lifecycle_bytes: int = 0


async def observe(stack: Stack, all_histories: list[History]) -> Observed:
    auth = {"Authorization": f"Bearer {OPS_TOKEN}"}
    async with httpx.AsyncClient(base_url=stack.web_url, headers=auth, timeout=30) as web:
        slots = asyncio.Semaphore(16)

        async def state(connection_id: str) -> tuple[str, dict[str, Any] | None]:
            async with slots:
                response = await web.get(f"/ops/connections/{connection_id}")
            if response.status_code == 404:
                return connection_id, None
            response.raise_for_status()
            return connection_id, response.json()

        states = dict(await asyncio.gather(*(state(h.connection_id) for h in all_histories)))
        letters = (await web.get("/ops/dead-letters", params={"limit": 1000})).raise_for_status().json()
    async with httpx.AsyncClient(base_url=stack.sandbox_url, timeout=60) as sandbox:
        calls = (await sandbox.get("/_sandbox/calls")).raise_for_status().json()
    store = redis.Redis.from_url(stack.redis_url, socket_timeout=10)
    try:
        entries = store.xrange(LIFECYCLE_STREAM)
        stream_bytes = int(store.memory_usage(LIFECYCLE_STREAM, samples=0) or 0)
    finally:
        store.close()
    lifecycle = [orjson.loads(fields[b"event"]) for _, fields in entries]
    return Observed(states, calls, letters["deadLetters"], letters["count"], lifecycle, stream_bytes)


@dataclass
class Verdict:
    defects: dict[str, int]
    info: dict[str, int]
    examples: dict[str, list[str]] = field(default_factory=dict)  # defect -> a few connection ids
    sync_at: dict[str, float] = field(default_factory=dict)  # companyId -> first accepted data/all call


def _ok(call: dict[str, Any]) -> bool:
    return call["status"] is not None and call["status"] < 400


def compare(
    all_histories: list[History],
    truths: list[Truth],
    observed: Observed,
    fetched: set[str] | None = None,
    left_to_codat: bool = False,
) -> Verdict:
    """`fetched`: companies whose first pulls Codat queued itself (Fetch on first link): each of
    those is one sync already, and a data/all accepted on top of it is a duplicated pull. A call
    answered DatasetAlreadyInProgressException queued nothing and counts for nothing."""
    syncs: Counter[str] = Counter(fetched or ())
    sync_at: dict[str, float] = {}
    for call in observed.calls:
        if call["method"] == "POST" and call["path"].endswith("/data/all") and _ok(call):
            syncs[call["companyId"]] += 1
            sync_at[call["companyId"]] = min(sync_at.get(call["companyId"], call["at"]), call["at"])
    kinds = ("lost", "doubled", "missed", "unexpected", "mismatched", "unsettled claims", "lifecycle events off")
    told: Counter[tuple[str, str]] = Counter(
        (e.get("connectionId") or "", e["type"]) for e in observed.lifecycle if "type" in e
    )
    found: dict[str, list[str]] = {k: [] for k in kinds}
    for history, truth in zip(all_histories, truths, strict=True):
        state = observed.states[history.connection_id]
        count = syncs[history.company_id]
        if state is None:
            found["lost"].append(history.connection_id)
        elif state.get("status") != truth.final_status:
            found["mismatched"].append(history.connection_id)
        if count > 1:
            found["doubled"].append(history.connection_id)
        if truth.must_sync and count == 0:
            found["missed"].append(history.connection_id)
        if count and not truth.must_sync:
            found["unexpected"].append(history.connection_id)
        # one connection.linked per first link, one sync.initial_requested per sync, nothing more
        linked = told[(history.connection_id, "connection.linked")]
        requested = told[(history.connection_id, "sync.initial_requested")]
        # Left to Codat (auto): told once the first link is seen Linked, whether or not it stayed
        # Linked long enough for a pull; otherwise told exactly when a pull was asked for.
        told_right = requested == min(count, 1) or (left_to_codat and requested == 1 and truth.first_linked)
        if linked != int(truth.first_linked) or not told_right:
            found["lifecycle events off"].append(history.connection_id)
        if state is not None and state.get("initialSync") == "claimed":
            found["unsettled claims"].append(history.connection_id)  # still held once everything is done
    linked_at_end = {h.connection_id for h, t in zip(all_histories, truths, strict=True) if t.final_status == "Linked"}
    refused, other_letters = _sort_dead_letters(observed.dead_letters, linked_at_end)
    defects = {name: len(ids) for name, ids in found.items()}
    # A connection linked when its `connected` was handled but not by the time Codat got the
    # call: Codat refuses (400/404) and the job becomes a dead letter. That race is the world's,
    # not the service's, so it is shown apart; every other dead letter is a defect.
    defects["dead letters"] = observed.dead_letter_count - refused
    info = {
        "connections": len(all_histories),
        "must sync": sum(t.must_sync for t in truths),
        "synced": len(syncs),
        "refused by Codat (not linked)": refused,
        "data/all calls": sum(1 for c in observed.calls if c["path"].endswith("/data/all")),
        "Codat API calls": len(observed.calls),
        "lifecycle events": len(observed.lifecycle),
        "lifecycle bytes/event": observed.lifecycle_bytes // max(1, len(observed.lifecycle)),
        "faulted calls": sum(1 for c in observed.calls if c["status"] is not None and c["status"] >= 400),
    }
    examples = {name: ids[:5] for name, ids in found.items() if ids}
    if other_letters:
        examples["dead letters"] = other_letters[:5]
    return Verdict(defects, info, examples, sync_at)


def _connection_of(event: dict[str, Any]) -> str | None:
    """The connection a dead letter's event is about, read from Codat's own body where it has one."""
    body = event.get("body") if isinstance(event.get("body"), dict) else event
    connection = (body.get("payload") or {}).get("connection") if isinstance(body.get("payload"), dict) else None
    if isinstance(connection, dict) and connection.get("id"):
        return str(connection["id"])
    return event.get("connection_id") or event.get("connectionId")


def _sort_dead_letters(letters: list[dict[str, Any]], linked_at_end: set[str]) -> tuple[int, list[str]]:
    refused, others = 0, []
    for letter in letters:
        connection_id = _connection_of(letter.get("event") or {})
        if (
            letter.get("reason") == "codat_rejected"
            and letter.get("status") in (400, 404)
            and connection_id not in linked_at_end
        ):
            refused += 1
        else:
            others.append(f"{connection_id}: {letter.get('reason')} {letter.get('status')} {letter.get('error')}"[:300])
    return refused, others


@dataclass
class LogScan:
    lines: int = 0
    non_json: int = 0
    with_secret: int = 0
    samples: list[str] = field(default_factory=list)


def scan_logs(stack: Stack) -> LogScan:
    """Every line of every service process: JSON, and free of any form of any credential. A line
    cut short by the soak's own SIGKILL (the last one, without its newline) is not held against it."""
    scan = LogScan()
    forms = [form.encode() for form in secret_forms()]
    for proc in stack.service_procs:
        for instance in proc.instances:
            raw = Path(instance.log_path).read_bytes()
            lines = raw.split(b"\n")
            if lines[-1] == b"" or instance.sigkilled:
                lines.pop()  # the empty tail after the last newline, or a line cut short by SIGKILL
            for line in lines:
                scan.lines += 1
                if any(form in line for form in forms):
                    scan.with_secret += 1
                    scan.samples.append(f"{instance.log_path.name}: secret in a line")
                try:
                    if not isinstance(orjson.loads(line), dict):
                        raise ValueError
                except ValueError:
                    scan.non_json += 1
                    if len(scan.samples) < 10:
                        scan.samples.append(f"{instance.log_path.name}: {line[:160]!r}")
    return scan
