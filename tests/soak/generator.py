"""Histories of Codat events per connection, built from Codat's own catalogue examples, and the
order they are delivered in: duplicates (some concurrent), reordering within a connection,
replays under a new webhook-id. Everything is drawn from one seeded Random, so a seed repeats."""

from __future__ import annotations

import copy
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from sandbox import catalogue

DATA_TYPES = ("invoices", "bills", "customers", "suppliers", "chartOfAccounts", "company")
# The status each connection event states; None: a sync event, which changes no status.
STATUS_OF_TYPE = {
    "connection.created": "PendingAuth",
    "connection.connected": "Linked",
    "connection.reconnected": "Linked",
    "connection.deleted": "Deleted",
}


@dataclass(frozen=True)
class Event:
    connection: int  # index into the histories
    index: int  # position in its connection's history (generatedDate order)
    event_type: str
    status: str | None
    generated_ms: int
    body: bytes


@dataclass
class History:
    company_id: str
    connection_id: str
    events: list[Event] = field(default_factory=list)


@dataclass(frozen=True)
class Delivery:
    msg_id: str
    event: Event
    copy: int  # 0: the first delivery of this message id; 1+: a duplicate; -1: a replay (new id)


@dataclass
class Mix:
    """What fraction of messages is delivered more than once, out of order, or replayed."""

    duplicate: float = 0.3
    concurrent_copies: float = 1 / 3
    reorder: float = 0.2
    replay: float = 0.02
    disconnect: float = 0.3
    reconnect_after_disconnect: float = 0.7
    delete: float = 0.05
    never_linked: float = 0.04  # created only: stays PendingAuth
    reconnected_only: float = 0.04  # linked before the service was deployed: never synced


class Examples:
    """Codat's first example of each event type (the disconnected one by the status it shows)."""

    def __init__(self) -> None:
        self.by_type: dict[str, dict[str, Any]] = {}
        self.disconnected: dict[str, dict[str, Any]] = {}
        for _, event_type, body in catalogue.examples():
            if "RuleType" in body:
                continue  # legacy payloads carry no generatedDate; the soak keeps to dated events
            if event_type == "connection.disconnected":
                self.disconnected.setdefault(body["payload"]["connection"]["status"], body)
            self.by_type.setdefault(event_type, body)

    def connection_event(
        self, event_type: str, company_id: str, connection_id: str, status: str | None, generated: str, event_id: str
    ) -> dict[str, Any]:
        source = self.disconnected[status] if event_type == "connection.disconnected" and status else None
        body = copy.deepcopy(source or self.by_type[event_type])
        body.update(id=event_id, generatedDate=generated)
        body["payload"]["referenceCompany"]["id"] = company_id
        body["payload"]["connection"]["id"] = connection_id
        if status and event_type != "connection.deleted":
            body["payload"]["connection"]["status"] = status
        return body

    def read_event(
        self, event_type: str, company_id: str, connection_id: str, data_type: str, generated: str, event_id: str
    ) -> dict[str, Any]:
        body = copy.deepcopy(self.by_type[event_type])
        body.update(id=event_id, generatedDate=generated)
        body["payload"]["referenceCompany"]["id"] = company_id
        body["payload"]["modifiedFromDate"] = generated
        body["payload"]["dataTypes"] = [
            {"connectionId": connection_id, "dataType": data_type, "recordsModified": True, "status": "Complete"}
        ]
        return body


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _types(rng: random.Random, mix: Mix) -> list[tuple[str, str | None]]:
    """One connection's story, as (event type, stated status)."""
    roll = rng.random()
    if roll < mix.never_linked:
        return [("connection.created", "PendingAuth")]
    if roll < mix.never_linked + mix.reconnected_only:
        return [("connection.reconnected", "Linked"), ("read.completed", None)]
    story: list[tuple[str, str | None]] = [
        ("connection.created", "PendingAuth"),
        ("connection.connected", "Linked"),
        ("read.completed.initial", None),
    ]
    if rng.random() < 0.5:
        story.append(("read.completed", None))
    if rng.random() < mix.disconnect:
        story.append(("connection.disconnected", rng.choice(("Unlinked", "Deauthorized"))))
        if rng.random() < mix.reconnect_after_disconnect:
            story += [("connection.reconnected", "Linked"), ("read.completed", None)]
    if rng.random() < mix.delete:
        story.append(("connection.deleted", "Deleted"))
    return story


def histories(count: int, rng: random.Random, mix: Mix) -> list[History]:
    examples = Examples()
    # generatedDates in the recent past: Codat's answer to GET connection ("the truth as of now")
    # must be newer than every event, as it is in production.
    start_ms = int(time.time() * 1000) - 3 * 3600 * 1000
    result = []
    for number in range(count):
        history = History(company_id=_uuid(rng), connection_id=_uuid(rng))
        at = start_ms + rng.randrange(3600 * 1000)
        for index, (event_type, status) in enumerate(_types(rng, mix)):
            at += rng.randrange(1000, 120_000)  # strictly increasing within a connection
            ids = (history.company_id, history.connection_id)
            if status is None:
                body = examples.read_event(event_type, *ids, rng.choice(DATA_TYPES), _iso(at), _uuid(rng))
            else:
                body = examples.connection_event(event_type, *ids, status, _iso(at), _uuid(rng))
            history.events.append(Event(number, index, event_type, status, at, orjson.dumps(body)))
        result.append(history)
    return result


def delivery_plan(all_histories: list[History], rng: random.Random, mix: Mix) -> list[list[Delivery]]:
    """Steps in sending order; the deliveries of one step are sent at the same moment."""
    slots: list[tuple[float, list[Delivery]]] = []
    span = float(sum(len(h.events) for h in all_histories))
    for history in all_histories:
        # Reordering within the connection: a delayed event slips behind up to three later ones.
        keyed = [(e.index + (rng.uniform(1.5, 3.5) if rng.random() < mix.reorder else 0.0), e) for e in history.events]
        keyed.sort(key=lambda pair: pair[0])
        # Connections overlap in time: each starts somewhere in the run, its events a few steps apart.
        at = rng.uniform(0, span)
        for _, event in keyed:
            at += rng.uniform(1, 30)
            msg_id = f"msg_{rng.getrandbits(96):024x}"
            first = [Delivery(msg_id, event, 0)]
            if rng.random() < mix.duplicate:
                for number in range(1, rng.randint(2, 4)):
                    duplicate = Delivery(msg_id, event, number)
                    if rng.random() < mix.concurrent_copies:
                        first.append(duplicate)
                    else:
                        slots.append((at + rng.uniform(1, 400), [duplicate]))
            if rng.random() < mix.replay:
                slots.append((at + rng.uniform(1, 800), [Delivery(f"msg_{rng.getrandbits(96):024x}", event, -1)]))
            slots.append((at, first))
    slots.sort(key=lambda slot: slot[0])
    return [step for _, step in slots]
