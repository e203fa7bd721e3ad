"""A process about to start waits for a Redis that answers it is loading its data (restarted,
reading its append-only file: it is up, and will answer), and refuses one that never answers
(service.cli.processes._require_redis). The loading Redis is a loopback server speaking RESP
that answers PING with Redis's own LOADING error a given number of times, as Redis documents
PING during loading (https://redis.io/docs/latest/develop/reference/errors/common/loading/): a
real one loads this suite's data too fast to catch at it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import cast

import pytest

from service.cli import processes
from service.core.config import Settings

LOADING = b"-LOADING Redis is loading the dataset in memory\r\n"  # Redis's own words


@contextmanager
def loading_redis(pings_loading: int) -> Iterator[tuple[int, list[float]]]:
    """A server on loopback: LOADING for the first `pings_loading` PINGs, then PONG; +OK to the
    rest (the client's CLIENT SETINFO). Yields its port and the times PINGs came."""
    listener = socket.create_server(("127.0.0.1", 0))
    pinged: list[float] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    for _ in range(data.count(b"*")):  # one answer per command in the read
                        if b"PING" in data.upper():
                            pinged.append(time.monotonic())
                            loading = len(pinged) <= pings_loading
                            conn.sendall(
                                b"-LOADING Redis is loading the dataset in memory\r\n" if loading else b"+PONG\r\n"
                            )
                            data = data.upper().replace(b"PING", b"", 1)
                        else:
                            conn.sendall(b"+OK\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], pinged
    finally:
        listener.close()


def settings(port: int) -> Settings:
    return cast(Settings, SimpleNamespace(redis_url=f"redis://127.0.0.1:{port}/0"))  # all it reads


def test_a_loading_redis_is_waited_for_past_the_wait_for_one_that_does_not_answer() -> None:
    with loading_redis(pings_loading=4) as (port, pinged):
        processes._require_redis(settings(port), wait_seconds=0.6, loading_seconds=30)
    assert len(pinged) == 5 and pinged[-1] - pinged[0] > 0.6  # past the plain wait: loading


def test_a_redis_loading_for_longer_than_allowed_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with loading_redis(pings_loading=1_000) as (port, _), pytest.raises(SystemExit):
        processes._require_redis(settings(port), wait_seconds=0.2, loading_seconds=1.2)
    assert "BusyLoadingError" in capsys.readouterr().err
