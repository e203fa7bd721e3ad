"""What an integrator's CODAT_HANDLERS module imports (docs/integrator/handlers.md), and all it may
rely on: the rest of `workers` is this service's own and changes without notice.

    from workers.api import LifecycleEvent, on

    @on("connection.linked", "connection.relinked")
    async def mark_onboarded(event: LifecycleEvent) -> None: ...

A handler gets one lifecycle event, a dict as the JSON Schema service/core/lifecycle.schema.json
describes it, and may be async or plain (a plain one runs in a thread). How handlers are found,
checked and called is workers.handlers' business (`python -m workers.handlers MODULE` checks one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from service.core.catalogue import LIFECYCLE_TYPES

__all__ = ["LIFECYCLE_TYPES", "Handler", "LifecycleEvent", "on"]

# One lifecycle event: the fields are those of service/core/lifecycle.schema.json (the one place
# they are declared), `type` one of LIFECYCLE_TYPES.
LifecycleEvent = dict[str, Any]
# A handler: async or plain; what it returns is ignored, what it raises is retried.
Handler = Callable[[LifecycleEvent], Any]

# Where `on` notes the types on the function, for workers.handlers to find.
_EVENT_TYPES = "__codat_event_types__"


def on(*event_types: str) -> Callable[[Handler], Handler]:
    """Register the decorated function for these lifecycle event types (LIFECYCLE_TYPES)."""

    def register(function: Handler) -> Handler:
        setattr(function, _EVENT_TYPES, (*registered_types(function), *event_types))
        return function

    return register


def registered_types(function: object) -> tuple[str, ...]:
    """The types `on` registered the function for (none for any other object)."""
    return tuple(getattr(function, _EVENT_TYPES, ()))
