"""`events tail`: the newest lifecycle events, then each new one as the workers derive it."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from service.cli.common import fail, settings, with_redis


def events(args: argparse.Namespace) -> int:
    from service.stores.lifecycle import LifecycleStream

    stream_name = settings().events_stream
    if args.type is not None and (refusal := _not_a_lifecycle_type(args.type)):
        return fail(refusal)

    def wanted(event: dict[str, Any]) -> bool:
        return args.type in (None, event.get("type")) and args.company in (None, event.get("companyId"))

    async def tail(redis: Any) -> None:
        stream = LifecycleStream(redis, stream_name)
        recent = await stream.recent(args.last, kind=args.type, company_id=args.company)
        if not recent and args.last > 0:  # on stderr: stdout holds events only
            which = " ".join(filter(None, (args.type, args.company and f"of company {args.company}")))
            waiting = "; waiting for new ones (Ctrl-C stops)" if args.follow else ""
            print(f"codat-webhooks: no {which + ' ' if which else ''}lifecycle events yet{waiting}", file=sys.stderr)
        for event in reversed(recent):
            _show(event, args.json)
        newest = await redis.xrevrange(stream_name, count=1)
        after = newest[0][0] if newest else "0-0"
        while args.follow:
            after, found = await stream.follow(after)
            for event in filter(wanted, found):
                _show(event, args.json)

    try:
        with_redis(tail)
    except KeyboardInterrupt:
        pass
    return 0


def _show(event: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(orjson.dumps(event).decode(), flush=True)
        return
    ids = " ".join(
        f"{name}={str(event[field])[:8]}"
        for name, field in (("company", "companyId"), ("connection", "connectionId"))
        if event.get(field)
    )
    extra = " ".join(f"{k}={event[k]}" for k in ("status", "dataType", "pausedUntil") if event.get(k))
    when = str(event.get("occurredAt") or "")[11:19]
    print(f"{when}  {event.get('type', '?'):<26} {ids} {extra}".rstrip(), flush=True)


def _not_a_lifecycle_type(given: str) -> str | None:
    import difflib

    from service.core.catalogue import LIFECYCLE_FROM_CODAT, LIFECYCLE_TYPES

    if given in LIFECYCLE_TYPES:
        return None
    if given in LIFECYCLE_FROM_CODAT:
        hint = f"; from Codat's {given} the workers derive {' or '.join(LIFECYCLE_FROM_CODAT[given])}"
    elif near := difflib.get_close_matches(given, LIFECYCLE_TYPES, n=1, cutoff=0.6):
        hint = f"; did you mean {near[0]}?"
    else:
        hint = f" (those are: {', '.join(LIFECYCLE_TYPES)})"
    return f"--type {given} is not a lifecycle event type{hint}"
