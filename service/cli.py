"""`codat-webhooks`: the command-line tool. `codat-webhooks COMMAND --help` for each command."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson

from service.core.config import ConfigError, Settings

# Dev tooling (sandbox/devcli.py), imported only when one of these runs.
DEV_COMMANDS = ("dev", "demo", "sandbox", "send", "link", "secret")


def _settings(require_secrets: bool = True) -> Settings:
    try:
        return Settings.from_env(require_secrets=require_secrets)
    except ConfigError as exc:
        # One line, then out: a process manager shows it as the reason the process stopped.
        raise SystemExit(fail(str(exc))) from None


def fail(message: str, code: int = 2) -> int:
    from service.core.logs import refuse

    refuse(message)
    return code


# --- processes --------------------------------------------------------------------------------


def web(args: argparse.Namespace) -> int:
    import uvicorn

    from service.web import httpserver
    from service.web.app import create_app

    settings = _settings()
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=settings.port,
        loop="uvloop",
        # Either parser with the same bound on a request's head (service/httpserver.py).
        http=httpserver.protocol(args.http),
        log_config=None,  # service.logs owns the log format
        access_log=False,  # one line per delivery is written by the endpoint itself
        # Deliveries are trusted by signature, never by address, and no line logs the peer:
        # rewriting the client address from X-Forwarded-For would be work for nothing.
        proxy_headers=False,
        timeout_graceful_shutdown=20,
    )
    return 0


def worker(args: argparse.Namespace) -> int:
    from service.core import logs
    from workers.settings import create_worker

    settings = _settings(require_secrets=False)
    if not settings.codat_api_key:
        return fail(
            "CODAT_API_KEY is not set: give the Codat API key, or start through "
            "`codat-webhooks dev` for the local sandbox"
        )
    logs.configure(settings.log_level, settings.log_format, secrets=settings.credentials())
    create_worker(settings, burst=args.burst).run()
    return 0


# --- talking to Codat (or the sandbox) ----------------------------------------------------------


def codat_client() -> httpx.Client:
    from workers.codat import basic_auth

    settings = _settings(require_secrets=False)
    if not settings.codat_api_key:
        raise SystemExit(fail("CODAT_API_KEY is not set"))
    return httpx.Client(
        base_url=settings.codat_base_url, timeout=15, headers={"Authorization": basic_auth(settings.codat_api_key)}
    )


def show(response: httpx.Response) -> int:
    print(orjson.dumps(response.json(), option=orjson.OPT_INDENT_2).decode() if response.content else "")
    if response.is_error:
        return fail(f"{response.request.method} {response.request.url.path}: HTTP {response.status_code}", 1)
    return 0


def register(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"url": args.url}
    if args.event_type:
        body["eventTypes"] = args.event_type
    with codat_client() as codat:
        return show(codat.post("/webhooks", json=body))


def company(args: argparse.Namespace) -> int:
    with codat_client() as codat:
        return show(codat.post("/companies", json={"name": args.name, "platformType": args.platform}))


# --- reading and mending the service's state ---------------------------------------------------


def _with_redis(action: Callable[[Any], Awaitable[Any]]) -> Any:
    from service.stores.client import connect

    settings = _settings(require_secrets=False)

    async def run() -> Any:
        redis = connect(settings.redis_url)
        try:
            return await action(redis)
        finally:
            await redis.aclose()

    return asyncio.run(run())


def connection(args: argparse.Namespace) -> int:
    from service.stores.connections import ConnectionStore

    state = _with_redis(lambda redis: ConnectionStore(redis).get(args.connection_id))
    if state is None:
        return fail(f"no state for connection {args.connection_id}", 1)
    print(orjson.dumps(state, option=orjson.OPT_INDENT_2).decode())
    return 0


def dead_letters(args: argparse.Namespace) -> int:
    from service.stores.deadletters import DeadLetters

    if args.action == "list":
        for letter in _with_redis(lambda redis: DeadLetters(redis).list(args.limit)):
            event = letter["event"]
            print(
                orjson.dumps(
                    {k: letter[k] for k in ("id", "reason", "status", "error", "attempts")}
                    | {
                        "eventType": event["event_type"],
                        "webhookId": event["message_id"],
                        "connectionId": event["connection_id"],
                    }
                ).decode()
            )
        return 0
    if not args.id:
        return fail("dead-letters replay needs a dead letter id")
    job_id = _with_redis(lambda redis: DeadLetters(redis).replay(args.id))
    if job_id is None:
        return fail(f"no dead letter {args.id}", 1)
    print(f"replayed {args.id} as job {job_id}")
    return 0


def _dev(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            from sandbox import devcli
        except ImportError as exc:
            return fail(
                f"`codat-webhooks {name}` is dev tooling, not part of this install ({exc.name} is missing): "
                "install the project with its dev extra, `pip install -e '.[dev]'`"
            )
        command: Callable[[argparse.Namespace], int] = getattr(devcli, name)
        return command(args)

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="codat-webhooks", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(func=func)
        return sub

    command(
        "dev",
        _dev("dev"),
        "run web + worker (Procfile), with an embedded Valkey, a generated signing secret "
        "and the local Codat sandbox wherever the environment has none",
    )
    command(
        "demo",
        _dev("demo"),
        "run Codat's quick-start end to end against the sandbox; exit 0 once the "
        "initial sync was requested and its read-completed event recorded",
    )
    sub = command("web", web, "run the web process (POST /webhooks/codat) on $PORT")
    sub.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"), help="address to bind")
    sub.add_argument(
        "--http",
        choices=["auto", "httptools", "h11"],
        default="auto",
        help="HTTP parser (default: httptools where installed, else h11)",
    )
    sub = command("worker", worker, "run the arq worker")
    sub.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    sub = command("sandbox", _dev("sandbox"), "run the local Codat API (sandbox/)")
    sub.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a container)")
    sub.add_argument("--port", type=int, default=8400)

    sub = command("send", _dev("send"), "send an example event from Codat's Webhooks.json, signed, to a URL")
    sub.add_argument("event_type", nargs="?", help="e.g. connection.connected (--list shows them all)")
    sub.add_argument("--example", help="which of the type's examples (default: the first)")
    sub.add_argument("--url", default=f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/webhooks/codat")
    sub.add_argument("--secret", help="signing secret (default: CODAT_WEBHOOK_SECRETS, else the dev one)")
    sub.add_argument("--list", action="store_true", help="list the event types and their examples")
    sub = command("register", register, "register a webhook consumer URL with Codat (POST /webhooks)")
    sub.add_argument("url", help="e.g. https://hooks.example.com/webhooks/codat")
    sub.add_argument("--event-type", action="append", help="subscribe to this type (repeat; default: all)")
    sub = command("company", company, "create a company in Codat (POST /companies)")
    sub.add_argument("name")
    sub.add_argument("--platform", default="mqjo", help="platform key (default mqjo, the Sandbox)")
    sub = command("link", _dev("link"), "sandbox only: finish Link for a company, as its SMB would")
    sub.add_argument("company_id")
    sub.add_argument("--platform", default="mqjo")

    sub = command("connection", connection, "show a connection's reconciled state")
    sub.add_argument("connection_id")
    sub = command("dead-letters", dead_letters, "list dead letters, or replay one by id")
    sub.add_argument("action", choices=["list", "replay"])
    sub.add_argument("id", nargs="?", help="the dead letter to replay")
    sub.add_argument("--limit", type=int, default=100, help="how many to list, newest first")
    command("secret", _dev("secret"), "print the dev signing secret (made on first use)")

    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
