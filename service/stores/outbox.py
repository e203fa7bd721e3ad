"""The transactional outbox: lifecycle events (README "Lifecycle events") are written by the same
Redis script that makes the state change they report, so a change without its event, or an event
for a change that lost its compare-and-set, cannot happen. Scripts run whole or not at all as
far as other clients see, but Redis does not roll a script back on an error: each one emits
*before* it writes its state, so a failed XADD leaves both undone.

Every script that emits gets the stream as a key and, in its first ARGV slots after its own,
what `Outbox.args` gives: the bound, the event id to use, and the time of derivation.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from service.core.clock import iso, now_ms
from service.stores.keys import LIFECYCLE_STREAM

SCHEMA_VERSION = 1
DEFAULT_MAXLEN = 200_000

# emit(stream, maxlen, id, type, fields): fields is a Lua table of the event's own fields.
# `company` is a stream field of its own so that a reader can filter without decoding.
EMIT = """
local function emit(stream, maxlen, id, kind, fields)
  fields['id'] = id
  fields['type'] = kind
  fields['schemaVersion'] = SCHEMA_VERSION
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'type', kind,
             'company', fields['companyId'] or '', 'event', cjson.encode(fields))
end
""".replace("SCHEMA_VERSION", str(SCHEMA_VERSION))


@dataclass(frozen=True)
class Outbox:
    stream: str = LIFECYCLE_STREAM
    maxlen: int = DEFAULT_MAXLEN

    def args(self) -> list[str | int]:
        """maxlen, a fresh event id (a script emitting several appends .1, .2, ...), derivedAt."""
        return [self.maxlen, f"evt_{uuid.uuid4().hex}", iso(now_ms()) or ""]
