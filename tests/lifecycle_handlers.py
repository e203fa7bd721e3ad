"""CODAT_HANDLERS for tests/test_lifecycle.py: one handler that works, one that always fails.
Each call is appended to $HANDLER_CALLS_FILE as a JSON line."""

from __future__ import annotations

import json
import os
from typing import Any

from workers.api import on


def _record(handler: str, event: dict[str, Any]) -> None:
    with open(os.environ["HANDLER_CALLS_FILE"], "a") as calls:
        calls.write(json.dumps({"handler": handler, "id": event["id"], "type": event["type"]}) + "\n")


@on("connection.linked")
async def mark_onboarded(event: dict[str, Any]) -> None:
    _record("mark_onboarded", event)


@on("connection.linked")
def always_fails(event: dict[str, Any]) -> None:  # a plain function: run in a thread
    _record("always_fails", event)
    raise RuntimeError("the integrator's own bug")


HANDLERS = {"sync.completed": [mark_onboarded]}
