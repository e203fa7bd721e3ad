"""Both Codat payload families, normalised into the one record the workers consume.

New events: {"id", "eventType" (some published examples say "type"), "generatedDate", "payload"}.
Legacy rule-based events: PascalCase {"CompanyId", "DataConnectionId", "RuleType", "AlertId",
"Message", "Data"}, whose RuleType is sometimes the name ("DataConnectionStatusChanged") and
sometimes prose ("Data Sync Status Changed To Error").

Field values are not validated here: a bad value is the event's problem, for the worker to log.
Only a body that is not a JSON object is refused. What an event says (a connection's status, a
first link, sync outcomes per data type, a rate limit's expiry) is read from either family here,
by the properties of Event, and nowhere else: the workers never look into the body.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from service.core.catalogue import KNOWN_EVENTS, LEGACY_BY_RULE, LEGACY_EVENTS, squash
from service.core.clock import parse_time_ms

STATUSES = frozenset({"PendingAuth", "Linked", "Unlinked", "Deauthorized", "Deleted"})
_STATUS_OF_TYPE = {
    "connection.connected": "Linked",
    "connection.reconnected": "Linked",
    "connection.deleted": "Deleted",
}
_RATE_LIMIT_REACHED = frozenset({"client.rateLimit.reached", "ClientRateLimitReached"})


class Malformed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Event:
    message_id: str
    event_type: str  # catalogue name; for an unknown type, as sent ("" when absent)
    known: bool
    legacy: bool
    generated_date: str | None  # as sent; legacy events carry none
    company_id: str | None
    connection_id: str | None
    received_at_ms: int
    body: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: that deep-copies the body, on the hot path.
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        return cls(**data)

    def ids(self) -> dict[str, str]:
        """company_id / connection_id, those the event has, for log context."""
        ids = {"company_id": self.company_id, "connection_id": self.connection_id}
        return {name: value for name, value in ids.items() if value}

    @property
    def generated_ms(self) -> int | None:
        """When Codat generated the event, or None when that cannot be known from it."""
        return parse_time_ms(self.generated_date)

    # What the event says, for both families.

    @property
    def claimed_status(self) -> str | None:
        """The connection status the event can be taken at its word for; None where Codat must
        be asked (legacy events carry no date to order them by, or no readable status)."""
        if self.legacy:
            return None
        if self.event_type in _STATUS_OF_TYPE:
            return _STATUS_OF_TYPE[self.event_type]
        status = self._connection.get("status")
        return status if status in STATUSES else None

    @property
    def first_link(self) -> bool:
        """Does the event say the connection was linked for the first time? `connection.connected`
        does, however late it arrives; so does a legacy change from PendingAuth (or from nothing)
        to Linked. `connection.reconnected` and a legacy relink do not."""
        if self.event_type == "connection.connected":
            return True
        if self.event_type != "DataConnectionStatusChanged":
            return False
        data = self._details
        return data.get("newStatus") == "Linked" and data.get("oldStatus") in (None, "", "PendingAuth")

    @property
    def codat_id(self) -> str:
        """Codat's own id of the event: the same across deliveries and replays under a new
        webhook id (legacy events: their AlertId, which is also their message id)."""
        body_id = None if self.legacy else self.body.get("id")
        return body_id if isinstance(body_id, str) and body_id else self.message_id

    @property
    def company_name(self) -> str | None:
        company = None if self.legacy else self._details.get("referenceCompany")
        name = company.get("name") if isinstance(company, dict) else None
        return name if isinstance(name, str) and name else None

    @property
    def connection_errors(self) -> Any:
        return self._connection.get("dataConnectionErrors")

    @property
    def sync_outcomes(self) -> list[dict[str, Any]]:
        """{dataType, status, connectionId, ...} for each data type the event reports on."""
        if not self.legacy:
            items = self._details.get("dataTypes")
            return [
                {
                    "dataType": item.get("dataType"),
                    "status": item.get("status"),
                    "connectionId": item.get("connectionId"),
                    "recordsModified": item.get("recordsModified"),
                }
                for item in (items if isinstance(items, list) else [])
                if isinstance(item, dict)
            ]
        data = self._details
        if self.event_type == "NewCompanySynchronized" or not data.get("dataType"):
            return []
        status = data.get("datasetStatus") if self.event_type == "DataSyncStatusChangedToError" else "Complete"
        return [
            {
                "dataType": data.get("dataType"),
                "status": status or "InternalError",
                "connectionId": self.connection_id,
                "datasetId": data.get("datasetId"),
            }
        ]

    @property
    def rate_limit_reached(self) -> bool:
        return self.event_type in _RATE_LIMIT_REACHED

    @property
    def rate_limit_expiry(self) -> Any:
        """The expiry as sent (for the log when it cannot be read)."""
        return self._details.get("ExpiresUtc" if self.legacy else "expiryDate")

    @property
    def rate_limit_expiry_ms(self) -> int | None:
        return parse_time_ms(self.rate_limit_expiry)

    @property
    def daily_quota(self) -> Any:
        return self._details.get("DailyQuota" if self.legacy else "dailyQuota")

    @property
    def _details(self) -> dict[str, Any]:
        """`payload` of a new event, `Data` of a legacy one; {} when absent or not an object."""
        details = self.body.get("Data" if self.legacy else "payload")
        return details if isinstance(details, dict) else {}

    @property
    def _connection(self) -> dict[str, Any]:
        connection = None if self.legacy else self._details.get("connection")
        return connection if isinstance(connection, dict) else {}


def parse(body: bytes, message_id: str | None, received_at_ms: int) -> Event:
    """Parse a verified body. `message_id` is the signed header id, None for legacy auth."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Malformed(_unreadable(body)) from None
    if not isinstance(data, dict):
        raise Malformed("not_an_object")
    if "RuleType" in data or "AlertId" in data:
        return _legacy(data, body, message_id, received_at_ms)
    return _new(data, body, message_id, received_at_ms)


def _unreadable(body: bytes) -> str:
    # Only once orjson has refused it: the hot path never decodes the body twice.
    if not body.strip():
        return "empty_body"
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return "body_not_utf8"
    return "not_json"


def _new(data: dict[str, Any], body: bytes, message_id: str | None, received_at_ms: int) -> Event:
    event_type = _str(data.get("eventType")) or _str(data.get("type")) or ""
    payload = data.get("payload")
    payload = payload if isinstance(payload, dict) else {}
    company = payload.get("referenceCompany")
    company_id = _str(company.get("id")) if isinstance(company, dict) else None
    if company_id is None and event_type.startswith("company."):
        company_id = _str(payload.get("id"))
    connection = payload.get("connection")
    connection_id = _str(connection.get("id")) if isinstance(connection, dict) else None
    return Event(
        message_id=message_id or _str(data.get("id")) or _digest(body),
        event_type=event_type,
        known=event_type in KNOWN_EVENTS,
        legacy=False,
        generated_date=_str(data.get("generatedDate")),
        company_id=company_id or _str(payload.get("companyId")),
        connection_id=connection_id or _str(payload.get("connectionId")),
        received_at_ms=received_at_ms,
        body=data,
    )


def _legacy(data: dict[str, Any], body: bytes, message_id: str | None, received_at_ms: int) -> Event:
    rule_type = _str(data.get("RuleType")) or ""
    event_type = LEGACY_BY_RULE.get(squash(rule_type), rule_type)
    extra = data.get("Data")
    extra = extra if isinstance(extra, dict) else {}
    return Event(
        message_id=message_id or _str(data.get("AlertId")) or _str(data.get("id")) or _digest(body),
        event_type=event_type,
        known=event_type in LEGACY_EVENTS,
        legacy=True,
        generated_date=None,
        company_id=_str(data.get("CompanyId")),
        connection_id=_str(data.get("DataConnectionId")) or _str(extra.get("dataConnectionId")),
        received_at_ms=received_at_ms,
        body=data,
    )


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _digest(body: bytes) -> str:
    # No id anywhere: the same bytes are the same message.
    return "sha256:" + hashlib.sha256(body).hexdigest()
