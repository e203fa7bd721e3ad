"""`reconcile`: compare the service's state with Codat's API now, as the workers do on a timer."""

from __future__ import annotations

import argparse
from typing import Any

import orjson

from service.cli.common import fail, settings, with_redis


def reconcile(args: argparse.Namespace) -> int:
    from service.core import logs
    from workers.deps import Deps
    from workers.reconcile import run_once

    found = settings()
    if not found.codat_api_key:
        return fail("CODAT_API_KEY is not set: the reconcile reads Codat's API")
    logs.configure(found.log_level, found.log_format, secrets=found.credentials())

    async def run(redis: Any) -> dict[str, Any]:
        deps = Deps.build(found, redis)
        try:
            return await run_once(deps, company_id=args.company, dry_run=args.dry_run)
        finally:
            await deps.aclose()

    summary = with_redis(run)
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    return 1 if summary.get("error") else 0
