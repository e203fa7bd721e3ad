"""`codat-webhooks demo` (`make demo`): Codat's quick-start, end to end, on this machine.

Add a company, link it to the Sandbox, synchronise its data, the way the seeds' "Step 2: Connect"
does against Codat. Here the peer is the local sandbox, and the service runs for real: Valkey,
web and worker from the Procfile. It passes (exit 0) only once the worker has requested the
initial sync, the read-completed event that followed has been recorded, and no dead letter was
left, on Codat's default settings (the sandbox's: Fetch on first link on).
"""

from __future__ import annotations

import os
import secrets
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson

from sandbox import devmode
from workers.codat import basic_auth

TIMEOUT_SECONDS = 90
# The log lines that tell the story, in the order they should come.
STORY = ("webhook.accepted", "connection.status", "sync.initial_requested", "sync.completed")


def run() -> int:
    with tempfile.TemporaryDirectory(prefix="codat-demo-") as scratch:
        data_dir = Path(scratch)
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("CODAT_", "REDIS_", "OPS_", "SANDBOX_"))
        }
        env.update(PORT=str(devmode.free_port()), OPS_TOKEN=secrets.token_urlsafe(32), LOG_FORMAT="json")
        log_path = data_dir / "procfile.log"
        with devmode.stack(env, data_dir), open(log_path, "wb") as log:
            processes = devmode.procfile(env, stdout=log, stderr=log, start_new_session=True)
            try:
                ok = walkthrough(env)
            except (AssertionError, httpx.HTTPError) as exc:
                print(f"demo failed: {exc}")
                ok = False
            finally:
                os.killpg(processes.pid, signal.SIGTERM)
                processes.wait(30)
        show_log(log_path)
    print("demo passed" if ok else "demo FAILED")
    return 0 if ok else 1


def walkthrough(env: dict[str, str]) -> bool:
    codat = httpx.Client(
        base_url=env["CODAT_BASE_URL"], timeout=10, headers={"Authorization": basic_auth(env["CODAT_API_KEY"])}
    )
    web = httpx.Client(
        base_url=f"http://127.0.0.1:{env['PORT']}", timeout=10, headers={"Authorization": f"Bearer {env['OPS_TOKEN']}"}
    )
    _wait(lambda: _answers(web, "/readyz"), "the web process to be ready")

    company = codat.post("/companies", json={"name": "Platypus Properties", "platformType": "mqjo"})
    company.raise_for_status()
    company_id = company.json()["id"]
    print(f"1. POST /companies: company {company_id}, Link URL {company.json()['redirect']}")

    connection = codat.post(f"/_sandbox/companies/{company_id}/link")  # the SMB finishes Link
    connection.raise_for_status()
    connection_id = connection.json()["id"]
    print(f"2. the SMB finished Link: connection {connection_id} is {connection.json()['status']}")

    state = _wait(lambda: _requested(web, connection_id), "the worker to request the initial sync")
    print(f"3. connection {state['status']}, initial sync requested at {state['initialSyncRequestedAt']}")

    synced = _wait(lambda: _all_complete(web, company_id), "the read-completed event to be recorded")
    kinds = sorted({outcome["eventType"] for outcome in synced.values()})
    print(f"4. {', '.join(kinds)} recorded: " + ", ".join(f"{t} {o['status']}" for t, o in sorted(synced.items())))
    # On Codat's default settings (Fetch on first link on) nothing may have failed on the way.
    letters = web.get("/ops/dead-letters").json()
    assert letters["count"] == 0, f"dead letters: {letters['deadLetters']}"
    print("5. no dead letter")
    return True


def show_log(log_path: Path) -> None:
    """The service's own account of the walkthrough, from its JSON log lines."""
    print("\nThe log, as it happened:")
    for raw in log_path.read_bytes().splitlines():
        _, _, line = raw.partition(b"| ")  # honcho's prefix: time, process name
        if not line.startswith(b"{"):
            continue
        entry = orjson.loads(line)
        if entry.get("event") in STORY or entry.get("level") in ("error", "critical"):
            fields = {k: entry[k] for k in ("event_type", "status", "mode", "data_type", "error") if k in entry}
            print(f"  {entry.get('timestamp', '')[11:23]} {entry['level']:<7} {entry['event']:<24} {fields}")


def _wait(probe: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if result := probe():
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {TIMEOUT_SECONDS} s waiting for {what}")


def _answers(web: httpx.Client, path: str) -> bool:
    try:
        return web.get(path).status_code == 200
    except httpx.TransportError:
        return False


def _requested(web: httpx.Client, connection_id: str) -> dict[str, Any] | None:
    response = web.get(f"/ops/connections/{connection_id}")
    state = response.json() if response.status_code == 200 else None
    return state if state and state["initialSyncRequestedAt"] else None


def _all_complete(web: httpx.Client, company_id: str) -> dict[str, Any] | None:
    outcomes = web.get(f"/ops/companies/{company_id}/syncs").json()["dataTypes"]
    return outcomes if outcomes and all(o["status"] == "Complete" for o in outcomes.values()) else None
