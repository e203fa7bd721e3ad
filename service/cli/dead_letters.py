"""`dead-letters list` and `dead-letters replay ID`: jobs that failed for good."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from service.cli.common import EXIT_NO, fail, with_redis


def dead_letters(args: argparse.Namespace) -> int:
    from service.stores.deadletters import DeadLetters

    if args.action == "list":
        letters = with_redis(lambda redis: DeadLetters(redis).list(args.limit))
        if not letters:  # said on stderr: stdout stays JSON lines (none) for a script
            print("codat-webhooks: no dead letters: no job has failed for good", file=sys.stderr)
        for letter in letters:
            print(orjson.dumps(_line(letter)).decode())
        return 0
    if not args.id:
        return fail("dead-letters replay needs a dead letter id")
    job_id = with_redis(lambda redis: DeadLetters(redis).replay(args.id))
    if job_id is None:
        return fail(f"no dead letter {args.id}: `codat-webhooks dead-letters list` shows their ids", EXIT_NO)
    print(f"replayed {args.id} as job {job_id}")
    return 0


def _line(letter: dict[str, Any]) -> dict[str, Any]:
    """One letter as `list` prints it; a handler's letter also names the handler and the event."""
    event = letter["event"]
    line = {k: letter[k] for k in ("id", "reason", "status", "error", "attempts")} | {
        "eventType": event["event_type"],
        "webhookId": event["message_id"],
        "connectionId": event["connection_id"],
    }
    if "handler" in event:
        line |= {"handler": event["handler"], "lifecycleId": event.get("lifecycle_id")}
    return line
