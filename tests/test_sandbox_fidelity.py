"""The sandbox's own checks, in process (its ASGI app): inputs refused per Codat-Platform.json
instead of breaking it, paging bounds and links, `Allow` on 405, and where it delivers events."""

from __future__ import annotations

import asyncio
import base64
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from sandbox.app import create_app
from sandbox.sender import Sender

KEY = "fidelity-test-key"
AUTH = {"Authorization": "Basic " + base64.b64encode(KEY.encode()).decode()}


@pytest.fixture
def no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any name lookup fails the test: the sandbox judges consumer hosts as written."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"DNS lookup of {args[0]!r}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)


async def client(**settings: Any) -> httpx.AsyncClient:
    app = create_app(api_key=KEY, webhook_secret="", time_scale=0.0, pull_step_seconds=0.01, **settings)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sandbox", headers=AUTH)


@pytest.fixture
async def codat() -> AsyncIterator[httpx.AsyncClient]:
    async with await client() as http:
        yield http


async def test_an_integer_beyond_64_bits_is_refused_and_breaks_nothing(codat: httpx.AsyncClient) -> None:
    big = 2**64 + 1
    assert (await codat.post("/companies", json={"name": "Big Ltd", "description": big})).status_code == 400
    assert (await codat.post("/companies", json={"name": "Big Ltd", "tags": {"n": big}})).status_code == 400
    lone_surrogate = b'{"name": "Bad", "description": "\\udc00"}'  # JSON may carry it; UTF-8 (and orjson) cannot
    assert (await codat.post("/companies", content=lone_surrogate)).status_code == 400
    assert (await codat.get("/companies")).json()["totalResults"] == 0
    company = (await codat.post("/companies", json={"name": "Big Ltd", "description": "ok", "extra": big})).json()
    connection = await codat.post(f"/companies/{company['id']}/connections", json={"platformKey": "mqjo"})
    assert connection.status_code == 200 and connection.json()["status"] == "PendingAuth"
    path = f"/companies/{company['id']}/connections/{connection.json()['id']}/authorization"
    assert (await codat.put(path, json={"token": big})).status_code == 400


@pytest.mark.parametrize(
    "query",
    ["page=0", "page=abc", "page=1.5", "page=2147483648", "pageSize=0", "pageSize=5001", "pageSize=", "pageSize=1_0"],
)
async def test_paging_out_of_range_is_a_400(codat: httpx.AsyncClient, query: str) -> None:
    response = await codat.get(f"/companies?{query}")
    assert response.status_code == 400 and response.json()["statusCode"] == 400


async def test_pages_carry_codats_links(codat: httpx.AsyncClient) -> None:
    for n in range(5):
        await codat.post("/companies", json={"name": f"Company {n}"})
    page = (await codat.get("/companies", params={"page": 2, "pageSize": 2, "query": "name=x"})).json()
    assert page["_links"] == {
        "self": {"href": "/companies"},
        "current": {"href": "/companies?query=name%3Dx&page=2&pageSize=2"},
        "next": {"href": "/companies?query=name%3Dx&page=3&pageSize=2"},
        "previous": {"href": "/companies?query=name%3Dx&page=1&pageSize=2"},
    }
    # The spec takes pageSize up to 5000 but a page holds at most 2000 (PagingInfo).
    assert (await codat.get("/companies", params={"pageSize": 5000})).json()["pageSize"] == 2000


async def test_405_lists_every_method_of_the_path(codat: httpx.AsyncClient) -> None:
    response = await codat.delete("/webhooks")
    assert response.status_code == 405
    assert {m.strip() for m in response.headers["allow"].split(",")} >= {"GET", "POST"}
    response = await codat.put("/companies/00000000-0000-0000-0000-000000000000/connections/x")
    assert {m.strip() for m in response.headers["allow"].split(",")} >= {"GET", "PATCH", "DELETE"}


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/webhooks/codat",
        "http://127.9.9.9/x",
        "http://[::1]:80/x",
        "http://localhost:9/x",
        "https://LOCALHOST/x",
    ],
)
async def test_loopback_consumers_are_registered(codat: httpx.AsyncClient, no_dns: None, url: str) -> None:
    response = await codat.post("/webhooks", json={"url": url})
    assert response.status_code == 201 and response.json()["url"] == url


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/webhooks/codat",
        "http://10.0.0.1/x",
        "http://[::2]/x",
        "http://localhost.example.com/x",
        "http://2130706433/",
        "ftp://127.0.0.1/x",
        "not a url",
        "http://127.0.0.1:99999/x",
        "http://xn--zz/",
        "http://a\nb/",
        "",
        7,
    ],
)
async def test_other_consumers_are_refused(codat: httpx.AsyncClient, no_dns: None, url: Any) -> None:
    response = await codat.post("/webhooks", json={"url": url})
    assert response.status_code == 400, response.text
    assert (await codat.get("/webhooks")).json()["results"] == []


async def test_any_host_when_allowed(no_dns: None) -> None:
    async with await client(allow_any_host=True) as codat:
        assert (await codat.post("/webhooks", json={"url": "https://hooks.example.com/x"})).status_code == 201
        assert (await codat.post("/webhooks", json={"url": "ftp://hooks.example.com/x"})).status_code == 400


def test_a_public_consumer_from_the_environment_stops_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_WEBHOOK_URL", "https://hooks.example.com/webhooks/codat")
    with pytest.raises(ValueError, match="loopback"):
        create_app(api_key=KEY)
    monkeypatch.setenv("SANDBOX_ALLOW_ANY_HOST", "1")
    create_app(api_key=KEY)


async def test_an_attempt_that_cannot_be_sent_is_recorded_not_raised() -> None:
    sender = Sender("whsec_" + base64.b64encode(b"x" * 24).decode(), time_scale=0.0)
    # Past registration's checks (as a consumer registered under other settings would be).
    sender.consumers["c"] = {"id": "c", "url": "http://a\nb/", "eventTypes": [], "disabled": False}
    sender.emit("company.created", {})
    for task in list(sender._tasks):
        await task
    await sender.aclose()
    assert {a["error"] for a in sender.attempts if "attempt" in a} == {"InvalidURL"}


async def test_a_message_is_given_up_after_the_schedule_and_a_failing_consumer_is_disabled() -> None:
    # Codat's 28 h of retries in ~0.1 s, its 5 days in ~0.4 s; nothing listens on the port.
    sender = Sender("whsec_" + base64.b64encode(b"y" * 24).decode(), time_scale=1e-6)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    consumer = sender.add_consumer(f"http://127.0.0.1:{dead}/webhooks/codat")
    try:
        for _ in range(12):
            sender.emit("connection.connected", {})
            await asyncio.sleep(0.06)
        await asyncio.sleep(0.2)
    finally:
        await sender.aclose()
    given_up = [a for a in sender.attempts if a.get("givenUp")]
    assert given_up and all(a["eventType"] == "connection.connected" for a in given_up)
    tried = [a for a in sender.attempts if "attempt" in a and a.get("msgId") == given_up[0]["msgId"]]
    assert len(tried) == 8  # every attempt of the schedule, then given up
    assert consumer["disabled"] is True
    assert [a for a in sender.attempts if a.get("consumerDisabled") == consumer["id"]]
    sent_before = len(sender.attempts)
    sender.emit("connection.connected", {})  # a disabled endpoint gets nothing
    await asyncio.sleep(0.05)
    assert len(sender.attempts) == sent_before


async def test_fetch_on_first_link_queues_pulls_when_a_connection_first_links(codat: httpx.AsyncClient) -> None:
    assert (
        await codat.put("/_sandbox/fetch-on-first-link", json={"dataTypes": ["invoices", "bills"]})
    ).status_code == 200
    company = (await codat.post("/companies", json={"name": "Fetch on link"})).json()["id"]
    connection = (await codat.post(f"/_sandbox/companies/{company}/link")).json()["id"]
    history = (await codat.get(f"/companies/{company}/data/history")).json()["results"]
    assert sorted(p["dataType"] for p in history) == ["bills", "invoices"]
    assert {p["connectionId"] for p in history} == {connection}
    assert (await codat.put("/_sandbox/fetch-on-first-link", json={"dataTypes": "all"})).status_code == 400


async def test_a_seeded_first_link_starts_codats_own_pulls_and_a_plain_seed_does_not(codat: httpx.AsyncClient) -> None:
    # `codat-webhooks send connection.connected` seeds with firstLink, as a Link would start them
    company, first, plain = (str(uuid.uuid4()) for _ in range(3))
    seed = f"/_sandbox/companies/{company}/connections/"
    assert (await codat.put(seed + plain, json={"status": "Linked"})).status_code == 200
    assert not (await codat.get(f"/companies/{company}/data/history")).json()["results"]
    assert (await codat.put(seed + first, json={"status": "Linked", "firstLink": True})).status_code == 200
    history = (await codat.get(f"/companies/{company}/data/history")).json()["results"]
    assert {p["connectionId"] for p in history} == {first}
    assert {p["dataType"] for p in history} == {
        "company",
        "chartOfAccounts",
        "invoices",
        "bills",
        "customers",
        "suppliers",
    }
