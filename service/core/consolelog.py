"""LOG_FORMAT=console: the same happenings as the JSON lines, each as one short line for a person.

    22:55:22.229 webhook.accepted         connection.connected  company=9e2ab74c connection=9b7153ec
    22:55:22.301 WARNING connection.needs_relink  status=Unlinked company=9205f795 connection=b60a14a6

Time (once: none under `make run`, whose process manager prints its own), the level only when it is
worth a look, the event, then its fields: the ones that say what happened first, ids last and cut
to their first 8 characters (enough to tell them apart on one screen; the JSON keeps them whole).
No None, no Python reprs, and colour only for a terminal.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any, TextIO

import orjson
from structlog.typing import EventDict, WrappedLogger

# Ids go last; their names lose the `_id` a person does not need.
IDS = ("webhook_id", "company_id", "connection_id", "data_type", "job_id", "dead_letter_id", "run_id")
# Known to every line of a job or delivery, or said by the event name itself.
QUIET = frozenset({"logger", "job_try", "timestamp", "level", "event"})
# event_type is news where a delivery arrives or leaves; on the lines between, its webhook id says it.
EVENT_TYPE_SHOWN = ("webhook.", "event.processed", "job.", "dead_letter.")
LONG_ID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32}")
LEVELS = {"warning": "WARNING", "error": "ERROR", "critical": "CRITICAL", "exception": "ERROR", "debug": "debug"}
COLOURS = {"WARNING": "\x1b[33m", "ERROR": "\x1b[31m", "CRITICAL": "\x1b[1;31m", "debug": "\x1b[2m"}
DIM, BOLD, RESET = "\x1b[2m", "\x1b[1m", "\x1b[0m"


def wants_colour(stream: TextIO) -> bool:
    """A terminal, or FORCE_COLOR (set by `make run` for its children when it has a terminal);
    never with NO_COLOR (no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return stream.isatty()


def short(value: str) -> str:
    return LONG_ID.sub(lambda match: match.group(0)[:8], value)


def text(value: Any) -> str:
    if isinstance(value, str):
        return value if value and " " not in value else orjson.dumps(value).decode()
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(text(item) for item in value)
    if isinstance(value, dict):
        return orjson.dumps(value, default=str).decode()
    return str(value)


class ConsoleLine:
    def __init__(self, *, colour: bool | None = None, show_time: bool | None = None) -> None:
        self.colour = wants_colour(sys.stdout) if colour is None else colour
        # Under `make run` honcho prefixes each line with its own time: one timestamp, not two.
        self.show_time = os.environ.get("CODAT_LOG_TIME", "1") != "0" if show_time is None else show_time

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> str:
        event = str(event_dict.get("event", ""))
        level = LEVELS.get(str(event_dict.get("level", "info")), "")
        exception = event_dict.pop("exception", None)
        if not event.startswith(EVENT_TYPE_SHOWN):
            event_dict.pop("event_type", None)
        job, webhook = str(event_dict.get("job_id") or ""), str(event_dict.get("webhook_id") or "")
        if webhook and webhook in job:  # a delivery's job is named after it: one id, not two
            event_dict.pop("job_id")
        fields = [
            f"{key}={text(value)}"
            for key, value in event_dict.items()
            # a False flag (stale=False, recovered=False) is the usual case, not news
            if key not in QUIET and key not in IDS and value not in (None, "", [], {}) and value is not False
        ]
        if (tries := event_dict.get("job_try")) and tries != 1:
            fields.append(f"try={tries}")
        fields += [
            f"{key.removesuffix('_id')}={short(text(event_dict[key]))}"
            for key in IDS
            if event_dict.get(key) not in (None, "")
        ]
        parts = []
        if self.show_time:
            stamp = str(event_dict.get("timestamp", ""))[11:23]  # HH:MM:SS.mmm of the ISO time
            parts.append(self._paint(stamp, DIM))
        if level:
            parts.append(self._paint(level, COLOURS.get(level, "")))
        parts.append(self._paint(f"{event:<26}", BOLD))
        line = " ".join([*parts, " ".join(fields)]).rstrip()
        return f"{line}\n{exception}" if exception else line

    def _paint(self, value: str, code: str) -> str:
        return f"{code}{value}{RESET}" if self.colour and code else value
