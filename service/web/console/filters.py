"""How the console's templates show values: the Jinja2 environment, its filters, and the links
between pages. Every value shown comes from Codat or a webhook and is untrusted text: templates
autoescape it, known credentials are masked from every value rendered (service.core.logs.Masker),
and links carry ids as one escaped path segment."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
import orjson

from service.core.clock import iso, now_ms
from service.core.logs import Masker
from service.web.auth import COOKIE_PATH
from service.web.console import explain

HERE = Path(__file__).resolve().parent
BASE = COOKIE_PATH
REFRESH_SECONDS = 10


def when(value: Any) -> str:
    """Epoch ms or ISO 8601 -> `2026-12-01 22:55:22Z`; nothing -> an em dash."""
    if value is None or value == "":
        return "—"
    if isinstance(value, int | float) or (isinstance(value, str) and value.isdigit()):
        value = iso(int(value))
    text = str(value).replace("T", " ")
    if "." in text and text.endswith("Z"):
        text = text.split(".")[0] + "Z"
    return text


def ago(ms: Any) -> str:
    if not isinstance(ms, int | float):
        return ""
    seconds = max(0, (now_ms() - ms) / 1000)
    if seconds < 90:
        return f"{int(seconds)} s ago"
    if seconds < 5400:
        return f"{int(seconds // 60)} min ago"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h ago"
    return f"{int(seconds // 86400)} days ago"


def seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def segment(value: Any) -> str:
    """A value as one URL path segment: `/` escaped too, so an id cannot add segments."""
    return quote(str(value), safe="")


def company_href(company_id: Any) -> str:
    """The company page's link. An id that would be a dot segment ("." or "..", which a browser
    resolves away, escaped or not) goes in the query string instead."""
    if str(company_id).strip(".") == "":
        return f"{BASE}/company?{urlencode({'id': str(company_id)})}"
    return f"{BASE}/companies/{segment(company_id)}"


def environment(secrets: list[str]) -> jinja2.Environment:
    masker = Masker(secrets)

    def finalize(value: Any) -> Any:
        # Applied to every {{ value }} before it is escaped: no credential the process holds is
        # ever written into a page, whatever a Codat error or an event happened to echo.
        return masker.text(value) if isinstance(value, str) else value

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every template is HTML
        finalize=finalize,
        undefined=jinja2.ChainableUndefined,  # event records are untrusted: a missing field is blank
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        when=when,
        ago=ago,
        seconds=seconds,
        pretty=lambda value: orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode(),
        explain=explain.outcome,
        qs=lambda params: urlencode({k: v for k, v in params.items() if v}),
        segment=segment,
    )
    env.globals.update(base=BASE, refresh_seconds=REFRESH_SECONDS, company_href=company_href)
    return env
