"""What happens to the sandbox's companies and connections, and the events each change sends:
company.created / deleted; connection.created / connected / disconnected / reconnected / deleted; and,
as queued pulls move through the dataset statuses, read.completed.initial (a connection's first
completed read) or read.completed."""

from __future__ import annotations

import asyncio
from typing import Any

from sandbox.sender import Sender
from sandbox.state import Company, Sandbox, now_iso

# The seeds' sample pull goes Initial -> ... -> Complete.
PROGRESSION = ("Queued", "Fetching", "MapQueued", "Mapping", "Complete")


class Lifecycle:
    def __init__(self, sandbox: Sandbox, sender: Sender, link_base: str, pull_step_seconds: float) -> None:
        self.sandbox = sandbox
        self.sender = sender
        self.link_base = link_base
        self.pull_step_seconds = pull_step_seconds
        self._linked_before: set[str] = set()
        self._read_before: set[str] = set()
        self.pull_outcomes: dict[str, dict[str, str]] = {}  # company -> dataType -> final status
        self._tasks: set[asyncio.Task[None]] = set()

    def reset(self) -> None:
        self._linked_before.clear()
        self._read_before.clear()
        self.pull_outcomes.clear()
        self.sender.attempts.clear()

    def reference(self, company: Company) -> dict[str, Any]:
        return {
            "id": company.id,
            "name": company.name,
            "description": company.description,
            "links": {"portal": f"{self.link_base}/companies/{company.id}/summary"},
        }

    def create_company(
        self, name: str, description: str | None, platform_key: str | None, tags: dict[str, str] | None = None
    ) -> Company:
        company = self.sandbox.add_company(name, description, platform_key)
        company.tags = tags
        self.sender.emit("company.created", self._details(company))
        return company

    def delete_company(self, company: Company) -> None:
        """Its connections and pulls go with it; Codat sends only company.deleted."""
        del self.sandbox.companies[company.id]
        self.sender.emit("company.deleted", self._details(company))

    def _details(self, company: Company) -> dict[str, Any]:
        details = company.as_json(self.link_base)
        details.pop("dataConnections")
        return details

    def _send(self, event_type: str, company: Company, connection: dict[str, Any]) -> None:
        self.sender.emit(event_type, {"referenceCompany": self.reference(company), "connection": dict(connection)})

    def create_connection(self, company: Company, platform_key: str = "mqjo") -> dict[str, Any]:
        connection = self.sandbox.put_connection(
            company, status="PendingAuth", platform_key=platform_key, link_base=self.link_base
        )
        self._send("connection.created", company, connection)
        return connection

    def authorize(self, company: Company, connection: dict[str, Any]) -> dict[str, Any]:
        """The SMB finished Link: Linked, first time (connected) or again (reconnected)."""
        connection["status"] = "Linked"
        again = connection["id"] in self._linked_before
        self._linked_before.add(connection["id"])
        self._send("connection.reconnected" if again else "connection.connected", company, connection)
        # "The data type is automatically queued for synchronization when a company is first
        # linked" for each with Fetch on first link on, in the company's settings
        # (https://docs.codat.io/core-concepts/data-type-settings); the pulls stay in progress for
        # the sandbox's pull time (SANDBOX_PULL_STEP_SECONDS x the statuses they go through).
        wanted = self.sandbox.fetch_on_first_link(company)
        if not again and wanted:
            self.queue_pulls(company, connection["id"], [t for t in wanted if not self.sandbox.in_progress(company, t)])
        return connection

    def link(self, company: Company, platform_key: str = "mqjo") -> dict[str, Any]:
        """The whole Link flow: the pending connection (created if there is none) authorised."""
        pending = next((c for c in company.connections.values() if c["status"] == "PendingAuth"), None)
        return self.authorize(company, pending or self.create_connection(company, platform_key))

    def disconnect(self, company: Company, connection: dict[str, Any], status: str) -> dict[str, Any]:
        connection["status"] = status  # Unlinked (by the client) or Deauthorized (by the SMB, or expiry)
        self._send("connection.disconnected", company, connection)
        return connection

    def delete(self, company: Company, connection_id: str) -> None:
        connection = company.connections.pop(connection_id)
        self._send("connection.deleted", company, connection)

    def queue_pulls(self, company: Company, connection_id: str, data_types: list[str]) -> list[dict[str, Any]]:
        if not data_types:
            return []
        pulls = [self.sandbox.queue_pull(company, connection_id, data_type) for data_type in data_types]
        task = asyncio.get_running_loop().create_task(self._progress(company, connection_id, pulls))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return pulls

    async def _progress(self, company: Company, connection_id: str, pulls: list[dict[str, Any]]) -> None:
        outcomes = self.pull_outcomes.get(company.id, {})
        for step, status in enumerate(PROGRESSION, start=1):
            await asyncio.sleep(self.pull_step_seconds)
            for pull in pulls:
                if not pull["isErrored"]:
                    failed = outcomes.get(pull["dataType"])
                    pull["status"] = failed if failed and status == "Fetching" else status
                    pull["isErrored"] = bool(failed and status == "Fetching")
                    pull["progress"] = 100 if status == "Complete" else step * 100 // len(PROGRESSION)
        for pull in pulls:
            pull["isCompleted"] = True
            pull["completed"] = now_iso()
        if company.id not in self.sandbox.companies:
            return  # deleted while its pulls ran: nothing left to report on
        first = connection_id not in self._read_before
        self._read_before.add(connection_id)
        self.sender.emit(
            "read.completed.initial" if first else "read.completed",
            {
                "referenceCompany": self.reference(company),
                "modifiedFromDate": now_iso(),
                "dataTypes": [
                    {
                        "connectionId": connection_id,
                        "dataType": p["dataType"],
                        "recordsModified": not p["isErrored"],
                        "status": p["status"],
                    }
                    for p in pulls
                ],
            },
        )
