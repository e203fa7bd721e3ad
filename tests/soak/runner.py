"""One soak run: build the histories and the delivery plan from a seed, start the processes,
seed the sandbox with each connection's final state, switch Codat's chaos on, deliver while a
worker is killed and Valkey restarted, wait for the queue to drain, then judge."""

from __future__ import annotations

import asyncio
import base64
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.soak.check import LogScan, Verdict, compare, observe, scan_logs, wait_drained
from tests.soak.generator import Delivery, History, Mix, delivery_plan, histories
from tests.soak.model import Truth, truth_of
from tests.soak.procs import API_KEY, SECRET, Stack
from tests.soak.sender import Sender, Sent

# Codat's default Fetch-on-first-link types (sandbox/state.py), queued by Codat on a first link.
FETCHED_ON_FIRST_LINK = ("company", "chartOfAccounts", "invoices", "bills", "customers", "suppliers")

KILL_AT, REDIS_AT = 0.35, 0.6  # fractions of the deliveries sent
MARKER = ".soak"


@dataclass
class SoakConfig:
    connections: int = 200
    seed: int = 1
    workers: int = 2
    fault_rate: float = 0.2  # of Codat API calls: 429 + Retry-After, 500, 503, or carried out and answered late
    kill_worker: bool = True
    restart_redis: bool = True
    redis_down_seconds: float = 5.0
    concurrency: int = 8
    drain_timeout: float = 300.0
    job_timeout: int = 5
    work_dir: Path | None = None  # logs and Valkey's data; a fresh temporary directory if None
    # Codat's Fetch on first link: for this fraction of the connections that first link (and stay
    # Linked), Codat's own first pulls are queued as the run starts and run for ~20 s; the service
    # runs CODAT_INITIAL_SYNC=initial_sync (auto: leave those to Codat and check they started).
    fetch_on_first_link: float = 0.5
    initial_sync: str = "auto"
    mix: Mix = field(default_factory=Mix)


@dataclass
class SoakResult:
    config: SoakConfig
    defects: dict[str, int]
    info: dict[str, int]
    figures: dict[str, float | None]
    crashes: list[str]
    examples: dict[str, list[str]]
    log_samples: list[str]
    work_dir: Path

    @property
    def clean(self) -> bool:
        return not any(self.defects.values())


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _seed_sandbox(url: str, all_histories: list[History], truths: list[Truth], config: SoakConfig) -> set[str]:
    """Codat's state as of now, the end of every history: a deleted connection is gone (404).
    Returns the companies whose first pulls Codat queued itself (Fetch on first link)."""
    rng = random.Random(f"fetch-on-first-link-{config.seed}")
    fetched = {
        h.company_id
        for h, t in zip(all_histories, truths, strict=True)
        if t.first_linked and t.final_status == "Linked" and rng.random() < config.fetch_on_first_link
    }
    auth = {"Authorization": "Basic " + base64.b64encode(API_KEY.encode()).decode()}
    async with httpx.AsyncClient(base_url=url, timeout=30, headers=auth) as sandbox:
        (await sandbox.post("/_sandbox/reset")).raise_for_status()
        slots = asyncio.Semaphore(16)

        async def seed(history: History, truth: Truth) -> None:
            if truth.final_status == "Deleted":
                return
            async with slots:
                path = f"/_sandbox/companies/{history.company_id}/connections/{history.connection_id}"
                (await sandbox.put(path, json={"status": truth.final_status})).raise_for_status()
                if history.company_id in fetched:
                    company = f"/companies/{history.company_id}"
                    for data_type in FETCHED_ON_FIRST_LINK:
                        (await sandbox.post(f"{company}/data/queue/{data_type}")).raise_for_status()

        await asyncio.gather(*(seed(h, t) for h, t in zip(all_histories, truths, strict=True)))
        chaos = {
            "rate": config.fault_rate,
            "seed": config.seed,
            "statuses": [429, 503, 500],
            "retryAfter": 0.5,
            "delay": config.job_timeout + 3,
        }
        (await sandbox.put("/_sandbox/chaos", json=chaos)).raise_for_status()
    return fetched


async def _workers_up(stack: Stack, within: float = 20) -> None:
    # A worker is taken as up once it has logged its start; the queue is durable either way.
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if all(w.current.log_path.exists() and w.current.log_path.stat().st_size for w in stack.workers):
            return
        await asyncio.sleep(0.1)


async def _faults(stack: Stack, config: SoakConfig, kill_at: asyncio.Event, redis_at: asyncio.Event) -> None:
    if config.kill_worker:
        await kill_at.wait()
        await asyncio.to_thread(stack.replace_worker, 0)
    if config.restart_redis:
        await redis_at.wait()
        await asyncio.to_thread(stack.stop_valkey)
        await asyncio.sleep(config.redis_down_seconds)
        await asyncio.to_thread(stack.start_valkey)


async def _run(
    config: SoakConfig, stack: Stack, all_histories: list[History], truths: list[Truth], steps: list[list[Delivery]]
) -> tuple[Sent, float | None, dict[str, float | None], Verdict]:
    fetched = await _seed_sandbox(stack.sandbox_url, all_histories, truths, config)
    stop = asyncio.Event()
    supervisor = asyncio.create_task(stack.supervise(stop))
    await _workers_up(stack)
    kill_at, redis_at = asyncio.Event(), asyncio.Event()

    def progress(fraction: float) -> None:
        if fraction >= KILL_AT:
            kill_at.set()
        if fraction >= REDIS_AT:
            redis_at.set()

    faults = asyncio.create_task(_faults(stack, config, kill_at, redis_at))
    sent = await Sender(f"{stack.web_url}/webhooks/codat", SECRET, config.concurrency).send(steps, progress)
    await faults
    drained_at = time.monotonic()
    drain = await wait_drained(stack.redis_url, config.drain_timeout)
    drain_seconds = None if drain is None else time.monotonic() - drained_at - 2.0  # less the settle time
    observed = await observe(stack, all_histories)
    stop.set()
    await supervisor
    verdict = compare(all_histories, truths, observed, fetched, left_to_codat=config.initial_sync == "auto")
    latencies = []
    for number, history in enumerate(all_histories):
        connected = next((e for e in history.events if e.event_type == "connection.connected"), None)
        synced = verdict.sync_at.get(history.company_id)
        acked = sent.first_ack.get((number, connected.index)) if connected else None
        if synced is not None and acked is not None:
            latencies.append(synced - acked)
    figures: dict[str, float | None] = {
        "deliveries/s": sent.deliveries / sent.seconds if sent.seconds else None,
        "ack p50 ms": percentile(sent.ack_ms, 0.5),
        "ack p99 ms": percentile(sent.ack_ms, 0.99),
        "drain s": drain_seconds,
        "webhook->Codat p50 s": percentile(latencies, 0.5),
        "webhook->Codat p99 s": percentile(latencies, 0.99),
    }
    return sent, drain, figures, verdict


def run_soak(config: SoakConfig) -> SoakResult:
    work_dir = Path(config.work_dir or tempfile.mkdtemp(prefix=f"soak-{config.seed}-"))
    if (work_dir / MARKER).exists():
        shutil.rmtree(work_dir)  # a previous soak's logs and data, never anything else
    elif work_dir.exists() and any(work_dir.iterdir()):
        raise SystemExit(f"{work_dir} is not empty and not a soak's directory")
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / MARKER).touch()
    rng = random.Random(config.seed)
    all_histories = histories(config.connections, rng, config.mix)
    truths = [truth_of(h) for h in all_histories]
    steps = delivery_plan(all_histories, rng, config.mix)
    stack = Stack(work_dir, config.workers, config.job_timeout, config.initial_sync)
    try:
        stack.start()
        sent, drain, figures, verdict = asyncio.run(_run(config, stack, all_histories, truths, steps))
    finally:
        stack.stop()
    scan: LogScan = scan_logs(stack)
    defects = dict(verdict.defects)
    defects.update(
        {
            "non-JSON lines": scan.non_json,
            "secret lines": scan.with_secret,
            "crashed": len(stack.crashes),
            "refused deliveries": len(sent.refused),
            "undelivered": len(sent.undelivered),
            "not drained": int(drain is None),
        }
    )
    info = dict(verdict.info)
    info.update(
        {
            "deliveries": sent.deliveries,
            "retried deliveries": sent.retried,
            "log lines": scan.lines,
            "503 answers": sent.statuses.get(503, 0),
        }
    )
    crashes = [f"{c.name} exit {c.returncode} ({c.log_path})" for c in stack.crashes]
    examples = dict(verdict.examples)
    if sent.refused:
        examples["refused deliveries"] = [f"{m} {s} {t}" for m, s, t in sent.refused[:5]]
    return SoakResult(config, defects, info, figures, crashes, examples, scan.samples, work_dir)
