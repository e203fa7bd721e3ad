"""Time as the service handles it: epoch milliseconds inside, ISO 8601 (UTC, "Z") outside."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any


def now_ms() -> int:
    return int(time.time() * 1000)


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
