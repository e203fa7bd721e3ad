"""`gaps`: the intervals in which deliveries could not be taken, newest first, with what to do."""

from __future__ import annotations

import argparse

import orjson

from service.cli.common import with_redis


def gaps(args: argparse.Namespace) -> int:
    from service.stores.gaps import GapStore

    found = with_redis(lambda redis: GapStore(redis).list(args.limit))
    if args.json:
        for gap in found:
            print(orjson.dumps(gap).decode())
        return 0
    if not found:
        print("no gaps: the web took deliveries throughout (as far as Redis has kept: the last 500 gaps)")
        return 0
    for gap in found:
        until = gap["endAt"] or "now (still open)"
        covered = "covered by Codat's retries" if gap["coveredByRetries"] else "NOT covered by Codat's retries"
        print(f"{gap['startAt']} .. {until}  {gap['kind']}  {gap['seconds']} s, {covered}")
        print(f"    {gap['what']}")
        print(f"    to do: {gap['todo']}")
    return 0
