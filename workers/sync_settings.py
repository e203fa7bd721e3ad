"""Which data types Codat queues by itself when a connection first links: those whose Fetch on
first link is on in the company's sync settings (GET /companies/{id}/syncSettings), falling back
to the client's (GET /profile/syncSettings) where the company has none to give.
https://docs.codat.io/core-concepts/data-type-settings, "Use Fetch on first link".
"""

from __future__ import annotations

import time
from typing import Any

from workers.codat import CodatClient

# The client's sync settings change rarely (the Portal, or POST /profile/syncSettings).
CLIENT_SETTINGS_TTL_SECONDS = 600.0


class FetchOnFirstLink:
    """Which data types Codat queues by itself when a connection of a company first links."""

    def __init__(self, codat: CodatClient, ttl_seconds: float = CLIENT_SETTINGS_TTL_SECONDS) -> None:
        self._codat = codat
        self._ttl = ttl_seconds
        self._client: tuple[float, frozenset[str]] | None = None

    async def of(self, company_id: str) -> frozenset[str]:
        settings = await self._codat.sync_settings(company_id)
        if settings is not None:
            return _fetched_on_first_link(settings)
        if self._client is None or time.monotonic() - self._client[0] > self._ttl:
            self._client = (time.monotonic(), _fetched_on_first_link(await self._codat.sync_settings(None) or []))
        return self._client[1]


def _fetched_on_first_link(settings: list[dict[str, Any]]) -> frozenset[str]:
    return frozenset(str(s["dataType"]) for s in settings if s.get("fetchOnFirstLink") is True and s.get("dataType"))
