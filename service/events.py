"""Both Codat payload families, normalised into the one record the workers consume.

New events: {"id", "eventType" (some published examples say "type"), "generatedDate", "payload"}.
Legacy rule-based events: PascalCase {"CompanyId", "DataConnectionId", "RuleType", "AlertId",
"Message", "Data"}, whose RuleType is sometimes the name ("DataConnectionStatusChanged") and
sometimes prose ("Data Sync Status Changed To Error").

Field values are not validated here: a bad value is the event's problem, for the worker to log.
Only a body that is not a JSON object is refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

CONNECTION_EVENTS = frozenset({
    "connection.created", "connection.connected", "connection.failed", "connection.disconnected",
    "connection.reconnected", "connection.deleted", "DataConnectionStatusChanged",
})
SYNC_EVENTS = frozenset({
    "read.completed", "read.completed.initial", "DataSyncCompleted", "DatasetDataChanged",
    "DataSyncStatusChangedToError", "NewCompanySynchronized",
})
RATE_LIMIT_EVENTS = frozenset({
    "client.rateLimit.reached", "client.rateLimit.reset", "ClientRateLimitReached", "ClientRateLimitReset",
})
LEGACY_EVENTS = frozenset({
    "DataConnectionStatusChanged", "NewCompanySynchronized", "DataSyncCompleted", "DatasetDataChanged",
    "DataSyncStatusChangedToError", "PushOperationStatusChanged", "PushOperationTimedOut",
    "AccountCategoriesUpdated", "SyncConnectionDeleted", "SyncCompleted", "SyncFailed",
    "ClientRateLimitReached", "ClientRateLimitReset",
})
_WRITE_DATA_TYPES = (
    "bills", "bankTransactions", "items", "suppliers", "directCosts", "invoices", "bankAccounts",
    "purchaseOrders", "billPayments", "directIncomes", "journalEntries", "chartOfAccounts",
    "billCreditNotes", "creditNotes", "customers", "journals", "transfers", "payments",
)
# The 67 types of Codat's catalogue (sandbox/catalogue/Webhooks.json); tests check the two agree.
KNOWN_EVENTS = CONNECTION_EVENTS | SYNC_EVENTS | RATE_LIMIT_EVENTS | LEGACY_EVENTS | frozenset({
    "company.created", "company.deleted",
    "expenses.sync.successful", "expenses.sync.unsuccessful",
    "bankFeeds.sourceAccount.connected", "bankFeeds.sourceAccount.disconnected",
    "reports.categorizedBankStatement.generate.successful",
    "reports.categorizedBankStatement.generate.unsuccessful",
    *(f"{data_type}.write.{outcome}" for data_type in _WRITE_DATA_TYPES
      for outcome in ("successful", "unsuccessful")),
})


def _squash(rule_type: str) -> str:
    return "".join(ch for ch in rule_type.lower() if ch.isalnum())


# Legacy RuleType, letters and digits only, lower case -> catalogue name.
_LEGACY_BY_RULE = {_squash(name): name for name in LEGACY_EVENTS} | {
    "ratelimitreached": "ClientRateLimitReached",
    "ratelimitreset": "ClientRateLimitReset",
}


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


def parse_time_ms(value: Any) -> int | None:
    """An ISO 8601 time as epoch ms; None for anything else (Codat's own examples include a
    time of day with 99 seconds). A time without a zone is UTC, as Codat's are."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


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
    event_type = _LEGACY_BY_RULE.get(_squash(rule_type), rule_type)
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
