"""The transactional outbox: lifecycle events (docs/integrator/lifecycle-events.md) are written by the same
Redis script that makes the state change they report, so a change without its event, or an event
for a change that lost its compare-and-set, cannot happen. Scripts run whole or not at all as
far as other clients see, but Redis does not roll a script back on an error: each one emits
*before* it writes its state, so a failed XADD leaves both undone.

Every script that emits includes `lua/outbox_emit.lua` (`-- include: outbox_emit`, see
service.stores.scripts), gets the stream as a key and declares, among its ARGV, the names
`Outbox.args` gives: the bound, the event id to use, the time of derivation and the schema version.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from service.core.clock import iso, now_ms
from service.core.config import LIFECYCLE_MAXLEN
from service.stores.keys import LIFECYCLE_STREAM

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Outbox:
    stream: str = LIFECYCLE_STREAM
    maxlen: int = LIFECYCLE_MAXLEN  # the bound, declared with CODAT_EVENTS_MAXLEN

    def args(self) -> dict[str, str | int]:
        """The ARGV an emitting script declares for its outbox (lua/outbox_emit.lua): the bound,
        a fresh event id (a script emitting several appends .1, .2, ...), derivedAt, and the
        events' schema version."""
        return {
            "outbox_maxlen": self.maxlen,
            "event_id": f"evt_{uuid.uuid4().hex}",
            "derived_at": iso(now_ms()) or "",
            "schema_version": SCHEMA_VERSION,
        }

    def encoded(self, kind: str, fields: dict[str, Any]) -> bytes:
        """The event a script emits with `emit_encoded` (lua/outbox_emit.lua), encoded here: what
        `emit` adds in Lua (id, type, schema version) and derivedAt, with the event's fields.
        Encoding in the worker spares the one Redis primary a JSON decode and encode per event."""
        return orjson.dumps(
            {
                **fields,
                "derivedAt": iso(now_ms()) or "",
                "id": f"evt_{uuid.uuid4().hex}",
                "type": kind,
                "schemaVersion": SCHEMA_VERSION,
            }
        )
