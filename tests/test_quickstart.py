"""The seeds' quick-start through real processes: `codat-webhooks demo` (what `make demo` runs),
and the command-line tool's Codat-facing commands against the sandbox."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import redis

from tests.support import ROOT, SANDBOX_KEY, SECRET, SandboxControl, Web, queued_events


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **env},
    )


def test_demo_runs_the_quickstart_end_to_end() -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CODAT_", "REDIS_", "SANDBOX_"))}
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "demo"], cwd=ROOT, capture_output=True, text=True, timeout=180, env=clean
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for step in (
        "1. POST /companies",
        "2. the SMB finished Link",
        "3. connection Linked, initial sync requested",
        "4. read.completed.initial recorded",
        "demo passed",
    ):
        assert step in out
    story = [line.split()[2] for line in out.splitlines() if line.startswith("  ") and len(line.split()) > 2]
    assert story.index("sync.initial_requested") < story.index("sync.completed")


def test_send_signs_a_catalogue_example(web: Web, store: redis.Redis) -> None:
    result = cli("send", "connection.connected", "--url", f"{web.url}/webhooks/codat", "--secret", SECRET)
    assert result.returncode == 0 and "HTTP 202" in result.stdout
    [event] = queued_events(store)
    assert event["event_type"] == "connection.connected"
    legacy = cli(
        "send",
        "DataConnectionStatusChanged",
        "--example",
        "legacy-0",
        "--url",
        f"{web.url}/webhooks/codat",
        "--secret",
        SECRET,
    )
    assert legacy.returncode == 0 and "HTTP 202" in legacy.stdout
    listing = cli("send", "--list").stdout
    assert "read.completed.initial" in listing and "legacy-0" in listing
    assert cli("send", "no.such.type").returncode == 2
    wrong = cli("send", "connection.connected", "--url", f"{web.url}/webhooks/codat", "--secret", "whsec_" + "QUJD" * 8)
    assert wrong.returncode == 1 and "HTTP 401" in wrong.stdout


def test_register_company_and_link_against_the_sandbox(sandbox: SandboxControl) -> None:
    codat = {"CODAT_BASE_URL": sandbox.url, "CODAT_API_KEY": SANDBOX_KEY, "REDIS_URL": "redis://127.0.0.1:1"}
    # The sandbox delivers only to loopback consumers, so a public URL is refused (400).
    public = cli("register", "https://hooks.example.com/webhooks/codat", **codat)
    assert public.returncode != 0 and "HTTP 400" in public.stdout + public.stderr
    registered = cli("register", "http://127.0.0.1:9/webhooks/codat", "--event-type", "connection.connected", **codat)
    assert registered.returncode == 0
    consumer = orjson.loads(registered.stdout)
    assert consumer["eventTypes"] == ["connection.connected"]
    with sandbox.api() as api:
        assert api.get("/webhooks").json()["results"][-1]["url"] == "http://127.0.0.1:9/webhooks/codat"
        api.delete(f"/webhooks/{consumer['id']}")
    company = orjson.loads(cli("company", "Platypus Properties", **codat).stdout)
    linked = orjson.loads(cli("link", company["id"], **codat).stdout)
    assert linked["status"] == "Linked"
    assert cli("link", "no-such-company", **codat).returncode == 1
    assert cli("company", "x", **{**codat, "CODAT_API_KEY": "wrong"}).returncode == 1  # 401


def test_every_command_has_help() -> None:
    top = cli("--help").stdout
    commands = [
        c
        for c in (
            "dev",
            "demo",
            "web",
            "worker",
            "sandbox",
            "send",
            "register",
            "company",
            "link",
            "connection",
            "dead-letters",
            "secret",
        )
        if c in top
    ]
    assert len(commands) == 12
    for command in commands:
        result = cli(command, "--help")
        assert result.returncode == 0 and "usage: codat-webhooks" in result.stdout
