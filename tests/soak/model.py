"""The truth, from the generated histories alone: what each connection's state must end as, and
whether it must have had its initial sync. Written from the contract (DESIGN.md, issue 8), not
from the service's code, so the two can disagree."""

from __future__ import annotations

from dataclasses import dataclass

from tests.soak.generator import History


@dataclass(frozen=True)
class Truth:
    final_status: str
    must_sync: bool
    first_linked: bool  # a connection.connected exists: exactly one connection.linked is due


def truth_of(history: History) -> Truth:
    """Final status: that of the connection event with the largest generatedDate (sync events
    change no status). Initial sync: due once a `connection.connected` exists, however late it
    is delivered, and only if the connection is Linked at the end; `reconnected` alone never."""
    states = [e for e in history.events if e.status is not None]
    final = max(states, key=lambda e: e.generated_ms).status
    assert final is not None
    connected = any(e.event_type == "connection.connected" for e in history.events)
    return Truth(final_status=final, must_sync=connected and final == "Linked", first_linked=connected)
