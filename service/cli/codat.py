"""`register` and `company`: talking to Codat's API (or the sandbox's), from CODAT_API_KEY and
CODAT_BASE_URL alone, so that these need no REDIS_URL."""

from __future__ import annotations

import argparse
from typing import Any

import httpx
import orjson

from service.cli.common import EXIT_NO, EXIT_OK, fail
from service.core import devenv
from service.core.config import Settings


def codat_client() -> httpx.Client:
    """A client of Codat's API (or the sandbox's): the environment, then a running dev stack's."""
    from workers.codat import basic_auth

    env = devenv.merged()
    key = env.get("CODAT_API_KEY")
    if not key:
        raise SystemExit(
            fail("CODAT_API_KEY is not set: give your Codat API key, or start `make run`, whose sandbox this finds")
        )
    base = (env.get("CODAT_BASE_URL") or Settings.codat_base_url).rstrip("/")
    if httpx.URL(base).scheme not in ("http", "https") or not httpx.URL(base).host:
        raise SystemExit(fail(f"CODAT_BASE_URL is not an http(s) URL: {base!r}"))
    return httpx.Client(base_url=base, timeout=15, headers={"Authorization": basic_auth(key)})


def show(response: httpx.Response) -> int:
    """The answer's body on stdout (indented JSON where it is JSON); an error status: one line, exit 1."""
    try:
        text = orjson.dumps(response.json(), option=orjson.OPT_INDENT_2).decode() if response.content else ""
    except ValueError:  # not JSON: a proxy's page, say
        text = response.text
    print(text)
    if response.is_error:
        where = f"{response.request.method} {response.request.url.path}"
        hint = " (CODAT_API_KEY was refused)" if response.status_code == 401 else ""
        return fail(f"{where}: HTTP {response.status_code}{hint}", EXIT_NO)
    return EXIT_OK


def register(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"url": args.url}
    if args.event_type:
        body["eventTypes"] = args.event_type
    with codat_client() as codat:
        return show(codat.post("/webhooks", json=body))


def company(args: argparse.Namespace) -> int:
    with codat_client() as codat:
        return show(codat.post("/companies", json={"name": args.name, "platformType": args.platform}))
