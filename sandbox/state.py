"""The sandbox's in-memory Codat: companies, their connections and pull operations, every call
received, the faults a test has switched on per company, and random faults for all (chaos).
With SANDBOX_STATE_FILE (as `make run` starts it) the companies outlive a restart (StateFile)."""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# The data types the sandbox's sync settings list (a typical accounting set), and which of them
# have Fetch on first link on by default. Codat: "By default, Fetch on first link is on for most
# data types" (https://docs.codat.io/core-concepts/data-type-settings, "Use Fetch on first
# link"); the page does not say which are off, so here the two report types are (they cost the
# most to fetch), and `SANDBOX_FETCH_ON_FIRST_LINK` or PUT /_sandbox/fetch-on-first-link change it.
DEFAULT_DATA_TYPES = ("company", "chartOfAccounts", "invoices", "bills", "customers", "suppliers")
SETTINGS_DATA_TYPES = (*DEFAULT_DATA_TYPES, "balanceSheet", "profitAndLoss")
CLIENT_ID = "367f7975-267b-439b-90c6-a6040ee680f3"


def sync_settings(fetch_on_first_link: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """SyncSetting objects (Codat-Platform.json) by data type, Fetch on first link as given."""
    names = [*SETTINGS_DATA_TYPES, *(t for t in fetch_on_first_link if t not in SETTINGS_DATA_TYPES)]
    return {
        name: {
            "dataType": name,
            "fetchOnFirstLink": name in fetch_on_first_link,
            "syncSchedule": 24,
            "syncOrder": order,
            "syncFromWindow": 24,
            "monthsToSync": 24,
            "isLocked": False,
        }
        for order, name in enumerate(names)
    }


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
    # POST /companies/{id}/syncSettings: this company's own settings, over the client's.
    sync_settings: dict[str, dict[str, Any]] | None = None

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


@dataclass
class Behaviour:
    """How Codat answers where its docs leave a choice, and its documented limits; a reset keeps
    what the sandbox was started with."""

    # The data types with Fetch on first link on in the client's settings (see SETTINGS_DATA_TYPES).
    fetch_on_first_link: tuple[str, ...] = tuple(t for t in DEFAULT_DATA_TYPES)
    # DatasetAlreadyInProgressException's status code: not documented
    # (https://docs.codat.io/using-the-api/queueing-data-syncs); Codat's errors page lists 400
    # for a request it will not carry out, so 400, and 409 as the other plausible answer.
    in_progress_status: int = 400
    # "10 concurrent requests per ACC" and "1,000 x (1 + number of ACCs) requests per day"
    # (https://docs.codat.io/using-the-api/rate-limits): here a fixed daily quota.
    company_concurrency: int = 10
    daily_quota: int = 100_000

    def as_json(self) -> dict[str, Any]:
        return {
            "fetchOnFirstLink": list(self.fetch_on_first_link),
            "inProgressStatus": self.in_progress_status,
            "companyConcurrency": self.company_concurrency,
            "dailyQuota": self.daily_quota,
        }


class Sandbox:
    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.started_with = behaviour or Behaviour()
        self.behaviour = Behaviour(**vars(self.started_with))
        self.companies: dict[str, Company] = {}
        self.calls: list[dict[str, Any]] = []
        self.faults: dict[str, list[Fault]] = {}
        self.chaos = Chaos()
        # The client's sync settings (GET/POST /profile/syncSettings).
        self.client_settings = sync_settings(self.behaviour.fetch_on_first_link)
        self.in_flight: dict[str, int] = {}  # company id -> requests being answered now
        self.quota_used = 0  # requests today (the sandbox's "day" is its lifetime)
        if not hasattr(self, "state_file"):  # at start; a reset keeps the file and empties it
            self.state_file = StateFile.from_env()
            if self.state_file is not None:
                self.state_file.attach(self)

    def reset(self) -> None:
        self.__init__(self.started_with)  # type: ignore[misc]

    def set_fetch_on_first_link(self, data_types: tuple[str, ...]) -> None:
        self.behaviour.fetch_on_first_link = data_types
        self.client_settings = sync_settings(data_types)

    def settings_of(self, company: Company) -> dict[str, dict[str, Any]]:
        """A company's sync settings: its own where set, else the client's."""
        return company.sync_settings if company.sync_settings is not None else self.client_settings

    def fetch_on_first_link(self, company: Company) -> list[str]:
        return [name for name, setting in self.settings_of(company).items() if setting.get("fetchOnFirstLink")]

    def in_progress(self, company: Company, data_type: str) -> dict[str, Any] | None:
        """A pull of `data_type` for the company that has not finished (Codat's message names the
        company, not a connection: "Cannot queue {dataType} sync for {companyId}")."""
        return next((p for p in company.pulls if p["dataType"] == data_type and not p["isCompleted"]), None)

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


class StateFile:
    """The companies (their connections, pulls and sync settings) and the client's sync settings,
    kept as JSON across restarts: read at start, written when they changed (looked at every
    SAVE_EVERY_SECONDS, from a thread of its own) and once more on the way out. Dev only: the
    service's Valkey keeps its state across `make run` restarts, and a sandbox that forgot the
    companies would answer "company not found" about them. Pulls still running when the sandbox
    stopped are not carried on: they end as InternalError, with no webhook."""

    SAVE_EVERY_SECONDS = 1.0

    def __init__(self, path: Path) -> None:
        self.path = path
        self._written: str | None = None

    @classmethod
    def from_env(cls) -> StateFile | None:
        configured = os.environ.get("SANDBOX_STATE_FILE")
        return cls(Path(configured)) if configured else None

    def attach(self, sandbox: Sandbox) -> None:
        self.load(sandbox)
        threading.Thread(target=self._keep_saving, args=(sandbox,), name="sandbox-state", daemon=True).start()
        atexit.register(self.save, sandbox)
        # uvicorn takes SIGTERM/SIGINT while it serves, then puts back what it found and raises the
        # signal again once it has shut down: found here, this saves, then does what was there.
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, self._saving_then(signal.getsignal(signum), sandbox))

    def _saving_then(self, previous: Any, sandbox: Sandbox) -> Callable[[int, Any], None]:
        def handle(signum: int, frame: Any) -> None:
            self.save(sandbox)
            if callable(previous):
                previous(signum, frame)
            else:
                signal.signal(signum, previous or signal.SIG_DFL)
                signal.raise_signal(signum)

        return handle

    def load(self, sandbox: Sandbox) -> None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            _say(f"no saved state at {self.path}: starting with no companies")
            return
        try:
            saved = json.loads(text)
            companies = [Company(**company) for company in saved["companies"]]
            client_settings = saved.get("clientSettings")
        except (ValueError, KeyError, TypeError) as exc:
            kept = self.path.with_suffix(".unreadable.json")
            self.path.replace(kept)
            _say(f"{self.path} could not be read ({type(exc).__name__}), kept as {kept}: starting with no companies")
            return
        stopped = 0
        for company in companies:
            for pull in company.pulls:
                if not pull.get("isCompleted"):
                    pull.update(status="InternalError", isCompleted=True, isErrored=True)
                    stopped += 1
            sandbox.companies[company.id] = company
        if isinstance(client_settings, dict):
            sandbox.client_settings = client_settings
        self._written = text
        ended = f"; {stopped} pull(s) still running when it stopped ended as InternalError" if stopped else ""
        _say(f"{len(companies)} compan{'y' if len(companies) == 1 else 'ies'} restored from {self.path}{ended}")

    def snapshot(self, sandbox: Sandbox) -> str:
        companies = [dataclasses.asdict(company) for company in list(sandbox.companies.values())]
        return json.dumps({"companies": companies, "clientSettings": sandbox.client_settings}, indent=1)

    def save(self, sandbox: Sandbox) -> None:
        try:
            text = self.snapshot(sandbox)
        except RuntimeError:  # changed while it was read (the thread's save): the next one takes it
            return
        if text == self._written:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        partial.write_text(text)
        partial.replace(self.path)  # whole or not at all
        self._written = text

    def _keep_saving(self, sandbox: Sandbox) -> None:
        while True:
            time.sleep(self.SAVE_EVERY_SECONDS)
            try:
                self.save(sandbox)
            except OSError as exc:
                _say(f"could not write {self.path}: {exc}")


def _say(message: str) -> None:
    print(f"sandbox: {message}", file=sys.stderr, flush=True)
