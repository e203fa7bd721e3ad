"""The sandbox's in-memory Codat: companies, their connections and pull operations, every call
received, the faults a test has switched on per company, and random faults for all (chaos)."""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# What `data/all` queues for each linked connection (a typical accounting set).
DEFAULT_DATA_TYPES = ("company", "chartOfAccounts", "invoices", "bills", "customers", "suppliers")
PLATFORMS = {"mqjo": "Sandbox", "gbol": "Xero", "pdvj": "Sage 50 (UK & Ireland)"}


def now_iso() -> str:
    return datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class Fault:
    """The next `times` calls whose path contains `match` answer `status` (with Retry-After
    for a 429), or are answered `delay` seconds late."""

    status: int | None = None
    retry_after: float | None = None
    delay: float = 0.0
    times: int = 1
    match: str = ""


@dataclass
class Chaos:
    """Faults for every company at once: a fraction `rate` of Codat API calls, drawn from its own
    seeded generator so a run can be repeated, answer one of `statuses` (a 429 with Retry-After)
    or, with `delay` set, are carried out and answered `delay` seconds late."""

    rate: float = 0.0
    seed: int = 0
    statuses: tuple[int, ...] = (429, 500, 503)
    retry_after: float = 0.5
    delay: float = 0.0
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def fault(self) -> Fault | None:
        if self.rate <= 0 or self.rng.random() >= self.rate:
            return None
        choices: list[int | None] = [*self.statuses, None] if self.delay > 0 else list(self.statuses)
        status = self.rng.choice(choices) if choices else None
        if status is None:
            return Fault(delay=self.delay) if self.delay > 0 else None
        return Fault(status=status, retry_after=self.retry_after if status == 429 else None)

    def as_json(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "seed": self.seed,
            "statuses": list(self.statuses),
            "retryAfter": self.retry_after,
            "delay": self.delay,
        }


@dataclass
class Company:
    id: str
    name: str
    description: str | None
    platform: str
    created: str
    connections: dict[str, dict[str, Any]] = field(default_factory=dict)
    pulls: list[dict[str, Any]] = field(default_factory=list)
    tags: dict[str, str] | None = None

    def as_json(self, link_base: str) -> dict[str, Any]:
        # Fields without a value are left out rather than null: Codat-Platform.json is OpenAPI 3.1,
        # where its `nullable` means nothing, so a null description or lastSync breaks its schema.
        found: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "platform": self.platform,
            "redirect": f"{link_base}/link/{self.id}",
            "created": self.created,
            "dataConnections": list(self.connections.values()),
        }
        if self.description is not None:
            found["description"] = self.description
        if self.tags is not None:
            found["tags"] = self.tags
        return found


class Sandbox:
    def __init__(self) -> None:
        self.companies: dict[str, Company] = {}
        self.calls: list[dict[str, Any]] = []
        self.faults: dict[str, list[Fault]] = {}
        self.chaos = Chaos()
        # Codat's "Fetch on first link" per data type (off by default here; on for all in Codat):
        # a connection's first link queues a pull of each of these by itself.
        self.fetch_on_first_link: tuple[str, ...] = ()

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]

    def add_company(
        self, name: str, description: str | None = None, platform_key: str | None = None, company_id: str | None = None
    ) -> Company:
        company = Company(
            id=company_id or str(uuid.uuid4()),
            name=name,
            description=description,
            platform=PLATFORMS.get(platform_key or "", ""),
            created=now_iso(),
        )
        self.companies[company.id] = company
        return company

    def put_connection(
        self,
        company: Company,
        connection_id: str | None = None,
        status: str = "PendingAuth",
        platform_key: str = "mqjo",
        link_base: str = "",
    ) -> dict[str, Any]:
        connection_id = connection_id or str(uuid.uuid4())
        existing = company.connections.get(connection_id)
        connection = existing or {
            "id": connection_id,
            "integrationId": str(uuid.uuid4()),
            "integrationKey": platform_key,
            "sourceId": str(uuid.uuid4()),
            "platformName": PLATFORMS.get(platform_key, platform_key),
            "linkUrl": f"{link_base}/companies/{company.id}/connections/{connection_id}/start",
            "status": status,
            "created": now_iso(),
            "sourceType": "Accounting",
        }
        connection["status"] = status
        company.connections[connection_id] = connection
        return connection

    def queue_pull(
        self, company: Company, connection_id: str, data_type: str, requested: str | None = None
    ) -> dict[str, Any]:
        pull = {
            "id": str(uuid.uuid4()),
            "companyId": company.id,
            "connectionId": connection_id,
            "dataType": data_type,
            "status": "Initial",
            "requested": requested or now_iso(),
            "progress": 0,
            "isCompleted": False,
            "isErrored": False,
        }
        company.pulls.append(pull)
        return pull

    def record(self, method: str, path: str, query: str, company_id: str | None) -> dict[str, Any]:
        """Logged when it arrives, so a call still in flight is counted; its status follows."""
        call = {
            "method": method,
            "path": path,
            "query": query,
            "companyId": company_id,
            "at": time.time(),
            "status": None,
        }
        self.calls.append(call)
        return call

    def take_fault(self, company_id: str | None, path: str) -> Fault | None:
        # "*": faults for every call, those without a company (GET /companies) included.
        for fault in [*self.faults.get(company_id or "", []), *self.faults.get("*", [])]:
            if fault.times > 0 and fault.match in path:
                fault.times -= 1
                return fault
        # A company's own faults first, so a test's scripted fault is never masked by chance.
        return self.chaos.fault()
