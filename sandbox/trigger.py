"""`codat-webhooks send`: one of Codat's own examples, signed, posted to the service, and carried
through to a real outcome when the service talks to the sandbox.

Codat's published examples name companies and connections that exist nowhere, so sent as they
are, a `connection.connected` ends in a dead letter: the worker asks the sandbox for a connection
it has never heard of. Against the sandbox, therefore, as `stripe trigger` makes the objects its
events are about, the example's company and connection are first made there (in the status the
event claims), the example is rewritten to their ids and dated now, and then the worker's outcome
is read back from Redis. `--keep-ids` sends the example as published.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from service.core import catalogue as kinds
from service.core import events

# What the sandbox can hold; another claimed status (Deleted) starts from Linked.
SEEDABLE = ("PendingAuth", "Linked", "Unlinked", "Deauthorized")
LIST_HEADER = (
    "EVENT TYPE: what to pass to `send`; WORKER: what the worker does with it (connection state and first "
    "sync, sync outcome, rate-limit pause, or logged only); EXAMPLES: the names Codat's Webhooks.json gives "
    "its examples, for --example (the first is the default)"
)


def route(event_type: str) -> str:
    if event_type in kinds.CONNECTION_EVENTS:
        return "connection"
    if event_type in kinds.SYNC_EVENTS:
        return "sync"
    if event_type in kinds.RATE_LIMIT_EVENTS:
        return "rate-limit"
    return "logged"


def listing(examples: Mapping[str, Mapping[str, Any]]) -> str:
    width = max(len(name) for name in examples)
    lines = [LIST_HEADER, "", f"{'EVENT TYPE':<{width}}  {'WORKER':<10}  EXAMPLES"]
    lines += [f"{name:<{width}}  {route(name):<10}  {', '.join(named)}" for name, named in examples.items()]
    return "\n".join(lines)


def is_sandbox(base_url: str | None) -> bool:
    """Does CODAT_BASE_URL point at the sandbox? Only it answers its control routes."""
    if not base_url or "api.codat.io" in base_url:
        return False
    try:
        return httpx.get(f"{base_url.rstrip('/')}/_sandbox/chaos", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def with_sandbox_ids(body: dict[str, Any], base_url: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The example, about a company and connection made in the sandbox just now; and their ids."""
    event = events.parse(orjson.dumps(body), "send", 0)
    if not event.company_id:
        return body, {}
    made = {"company_id": str(uuid.uuid4())}
    text = orjson.dumps(body).decode()
    text = text.replace(f'"{event.company_id}"', f'"{made["company_id"]}"')
    if event.connection_id:
        made["connection_id"] = str(uuid.uuid4())
        text = text.replace(f'"{event.connection_id}"', f'"{made["connection_id"]}"')
    rewritten = orjson.loads(text)
    if "generatedDate" in rewritten:  # today's event, not the catalogue's from 2022
        rewritten["generatedDate"] = datetime.now(tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    # The sandbox holds what the event says: a deleted connection is not there; an event about a
    # company alone makes the company only (a Linked connection nobody told of would be found by
    # the next reconcile as a first link this service missed).
    status = (event.claimed_status or "Linked") if event.connection_id else "Deleted"
    connection = made.get("connection_id") or str(uuid.uuid4())
    seeded = httpx.put(
        f"{base_url.rstrip('/')}/_sandbox/companies/{made['company_id']}/connections/{connection}",
        # a first link starts Codat's own first pulls, as the Link flow does
        json={"status": status if status in (*SEEDABLE, "Deleted") else "Linked", "firstLink": event.first_link},
        timeout=10,
    )
    seeded.raise_for_status()
    return rewritten, made


def wait_for_outcome(redis_url: str, event_type: str, made: Mapping[str, str], timeout: float = 15) -> str | None:
    """What the worker made of it, read from Redis; None if nothing within `timeout`."""
    from service.stores.client import connect
    from service.stores.connections import ConnectionStore
    from service.stores.syncs import SyncStore

    async def probe() -> str | None:
        redis = connect(redis_url)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if found := await _outcome(ConnectionStore(redis), SyncStore(redis), event_type, made):
                    return found
                await asyncio.sleep(0.2)
            return None
        finally:
            await redis.aclose()

    return asyncio.run(probe())


async def _outcome(connections: Any, syncs: Any, event_type: str, made: Mapping[str, str]) -> str | None:
    if route(event_type) == "connection" and "connection_id" in made:
        state = await connections.get(made["connection_id"])
        if not state:
            return None
        if event_type == "connection.connected" and not state["initialSyncRequestedAt"]:
            return None  # the first sync follows within a moment: wait for it
        sync = (
            f", initial sync requested at {state['initialSyncRequestedAt']}" if state["initialSyncRequestedAt"] else ""
        )
        return f"connection {made['connection_id']} is {state['status']}{sync}"
    if route(event_type) == "sync":
        outcomes = await syncs.get(made["company_id"])
        if not outcomes:
            return None
        told = ", ".join(f"{data_type} {o['status']}" for data_type, o in sorted(outcomes.items()))
        return f"company {made['company_id']}: {told}"
    return None
