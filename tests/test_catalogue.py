"""Parsing every published payload shape, as pure functions (no I/O needed to be real here)."""

from __future__ import annotations

import orjson
import pytest

from service.core import events
from tests.support import CATALOGUE, catalogue_examples

EXAMPLES = catalogue_examples()


def test_known_types_are_exactly_codats_catalogue() -> None:
    assert set(CATALOGUE["webhooks"]) == events.KNOWN_EVENTS
    assert len(events.KNOWN_EVENTS) == 67


def test_every_catalogued_type_has_an_example_or_is_legacy() -> None:
    # Guards the example walk itself: it must reach both families.
    types = {event_type for _, event_type, _ in EXAMPLES}
    assert "connection.connected" in types and "DataConnectionStatusChanged" in types
    assert len(EXAMPLES) >= 80


@pytest.mark.parametrize(("name", "event_type", "body"), EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_example_normalises_to_its_catalogue_type(name: str, event_type: str, body: dict) -> None:
    event = events.parse(orjson.dumps(body), "msg_1", 0)
    assert event.event_type == event_type
    assert event.known
    assert event.legacy == ("RuleType" in body)
    assert event.message_id == "msg_1"
    assert event.body == body


def test_connection_event_ids() -> None:
    body = next(b for _, t, b in EXAMPLES if t == "connection.connected")
    event = events.parse(orjson.dumps(body), None, 0)
    assert event.company_id == "0498e921-9b53-4396-a412-4f2f5983b0a2"
    assert event.connection_id == "ee2eb431-c0fa-4dc9-93fa-d29781c12bcd"
    assert event.generated_date == "2024-08-08T17:10:34.015Z"
    assert event.message_id == body["id"]  # no signed id: the body's


def test_legacy_status_change_ids_and_message_id() -> None:
    body = next(b for _, t, b in EXAMPLES if t == "DataConnectionStatusChanged")
    event = events.parse(orjson.dumps(body), None, 0)
    assert event.legacy and event.generated_date is None
    assert event.company_id == body["CompanyId"]
    assert event.connection_id == body["DataConnectionId"]
    assert event.message_id == body["AlertId"]


@pytest.mark.parametrize(
    "rule_type",
    ["Data Sync Status Changed To Error", "DataSyncStatusChangedToError", "data sync status changed to error"],
)
def test_legacy_rule_type_spellings(rule_type: str) -> None:
    event = events.parse(orjson.dumps({"RuleType": rule_type, "AlertId": "a"}), None, 0)
    assert event.event_type == "DataSyncStatusChangedToError"


@pytest.mark.parametrize(
    "body",
    [
        {"eventType": 42, "payload": "not an object"},
        {"type": None, "payload": {"referenceCompany": ["x"], "connection": 7}},
        {"RuleType": ["x"], "AlertId": 5, "Data": "y", "CompanyId": {"a": 1}},
        {},
    ],
)
def test_wrong_field_types_are_the_events_problem_not_a_crash(body: dict) -> None:
    event = events.parse(orjson.dumps(body), None, 0)
    assert not event.known
    assert event.company_id is None and event.connection_id is None
    assert event.message_id.startswith("sha256:")  # no usable id: the body's digest


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty_body"),
        (b"  ", "empty_body"),
        (b"{not json", "not_json"),
        (b"[1, 2]", "not_an_object"),
        (b'"text"', "not_an_object"),
        (b"null", "not_an_object"),
    ],
)
def test_bodies_that_are_not_an_object(body: bytes, reason: str) -> None:
    with pytest.raises(events.Malformed) as raised:
        events.parse(body, "m", 0)
    assert raised.value.reason == reason


def test_record_round_trips_through_the_job_serializer() -> None:
    body = next(b for _, t, b in EXAMPLES if t == "read.completed")
    event = events.parse(orjson.dumps(body), "m", 123)
    assert events.Event.from_dict(orjson.loads(orjson.dumps(event.to_dict()))) == event
