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

from service.core import devenv, redisurl
from service.core.config import ConfigError, Settings

# Dev tooling is registered by the package metadata (pyproject's `codat_webhooks.dev` entry
# points, sandbox/devcli.py) and loaded only when one of its commands runs: this module, which
# production runs, names no dev module.
DEV_COMMAND_GROUP = "codat_webhooks.dev"
# The long-running processes: their refusals are log lines (process.refused_to_start), read by a
# log pipeline; every other command answers a person, in plain words.
PROCESSES = ("web", "worker")

# Exit statuses (README "Command-line tool"), so that a script can tell these apart.
EXIT_OK = 0
EXIT_NO = 1  # the answer was no: not found, or Codat (or the service) answered with an error
EXIT_CONFIG = 2  # a setting or an argument is missing or invalid: fix it and run again
EXIT_UNREACHABLE = 3  # Redis, Codat (or the sandbox) or the service did not answer
EXIT_RUNNING = 4  # `dev`: another dev stack already runs in this checkout

_process = False  # set by main(): is this run a web or worker process?


def _settings(require_secrets: bool = True) -> Settings:
    # The processes read their environment only; the tool also finds a running dev stack's values.
    env = None if _process else devenv.merged()
    try:
        return Settings.from_env(env, require_secrets=require_secrets)
    except ConfigError as exc:
        # One line, then out: a process manager shows it as the reason the process stopped.
        raise SystemExit(fail(str(exc))) from None


def fail(message: str, code: int = EXIT_CONFIG) -> int:
    """One line on stderr, then `code`: a process's refusal to start as a log line, any other
    command's error in plain words."""
    if _process:
        from service.core.logs import refuse

        refuse(message)
    else:
        print(f"codat-webhooks: {message}", file=sys.stderr)
    return code


def _require_redis(settings: Settings, wait_seconds: float = 5.0) -> None:
    """Before a process starts: REDIS_URL is usable and Redis answers. Otherwise one line naming
    where it was looked for (never the password), and exit 2. Waits a little, so that a Redis
    started alongside (compose, a pod's sidecar) is not refused for being a second late."""
    import time

    try:
        target = redisurl.parse(settings.redis_url)
    except redisurl.RedisUrlError as exc:
        raise SystemExit(fail(str(exc))) from None
    from service.status import redis_trouble

    deadline = time.monotonic() + wait_seconds
    while True:
        error = _ping(settings.redis_url)
        if error is None:
            return
        what, todo, setting = redis_trouble(error)
        if setting:  # waiting does not mend a wrong password or port
            raise SystemExit(fail(f"Redis at {target.where()} {what}: {todo}"))
        if time.monotonic() >= deadline:
            raise SystemExit(fail(f"Redis at {target.where()} {what}: start it, or fix REDIS_URL"))
        time.sleep(0.5)


def _ping(url: str) -> BaseException | None:
    """None if Redis answers PING, else the failure (name its kind only: its text may hold the URL)."""
    from redis.exceptions import RedisError

    from service.stores.client import connect

    async def ping() -> None:
        redis = connect(url)
        try:
            await redis.ping()
        finally:
            await redis.aclose()

    try:
        asyncio.run(ping())
    except (RedisError, OSError) as exc:
        return exc
    return None


# --- processes --------------------------------------------------------------------------------


def web(args: argparse.Namespace) -> int:
    import uvicorn

    from service.web import httpserver
    from service.web.app import create_app

    settings = _settings()
    _require_redis(settings)
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
    if settings.handlers:  # refused here, as one line, not as a crash in arq's startup
        from workers.handlers import HandlersRefused, load

        try:
            load(settings.handlers)
        except HandlersRefused as exc:
            return fail(str(exc))
    _require_redis(settings)
    logs.configure(settings.log_level, settings.log_format, secrets=settings.credentials())
    create_worker(settings, burst=args.burst).run()
    return 0


# --- talking to Codat (or the sandbox) ----------------------------------------------------------


def codat_client() -> httpx.Client:
    """A client of Codat's API (or the sandbox's), from CODAT_API_KEY and CODAT_BASE_URL alone:
    the commands that only talk to Codat need no REDIS_URL."""
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


# --- reading and mending the service's state ---------------------------------------------------


def _with_redis(action: Callable[[Any], Awaitable[Any]]) -> Any:
    from redis.exceptions import RedisError

    from service.status import redis_trouble
    from service.stores.client import connect

    settings = _settings(require_secrets=False)
    try:
        where = redisurl.parse(settings.redis_url).where()
    except redisurl.RedisUrlError as exc:
        raise SystemExit(fail(str(exc))) from None

    async def run() -> Any:
        redis = connect(settings.redis_url)
        try:
            return await action(redis)
        finally:
            await redis.aclose()

    try:
        return asyncio.run(run())
    except (RedisError, OSError) as exc:  # not a Redis there, a wrong password, none answering
        what, todo, setting = redis_trouble(exc)
        todo = todo or "start the service's Redis (`make run` starts one), or set REDIS_URL"
        code = EXIT_CONFIG if setting else EXIT_UNREACHABLE
        raise SystemExit(fail(f"Redis at {where} {what}: {todo}", code)) from None


def connection(args: argparse.Namespace) -> int:
    from service.stores.connections import ConnectionStore

    state = _with_redis(lambda redis: ConnectionStore(redis).get(args.connection_id))
    if state is None:
        return fail(
            f"no connection {args.connection_id} here: no event for it has been processed yet "
            "(`codat-webhooks dead-letters list` shows events that failed)",
            EXIT_NO,
        )
    print(orjson.dumps(state, option=orjson.OPT_INDENT_2).decode())
    return 0


def dead_letters(args: argparse.Namespace) -> int:
    from service.stores.deadletters import DeadLetters

    if args.action == "list":
        letters = _with_redis(lambda redis: DeadLetters(redis).list(args.limit))
        if not letters:  # said on stderr: stdout stays JSON lines (none) for a script
            print("codat-webhooks: no dead letters: no job has failed for good", file=sys.stderr)
        for letter in letters:
            event = letter["event"]
            print(
                orjson.dumps(
                    {k: letter[k] for k in ("id", "reason", "status", "error", "attempts")}
                    | {
                        "eventType": event["event_type"],
                        "webhookId": event["message_id"],
                        "connectionId": event["connection_id"],
                    }
                    | (
                        {"handler": event["handler"], "lifecycleId": event.get("lifecycle_id")}
                        if "handler" in event
                        else {}
                    )
                ).decode()
            )
        return 0
    if not args.id:
        return fail("dead-letters replay needs a dead letter id")
    job_id = _with_redis(lambda redis: DeadLetters(redis).replay(args.id))
    if job_id is None:
        return fail(f"no dead letter {args.id}: `codat-webhooks dead-letters list` shows their ids", EXIT_NO)
    print(f"replayed {args.id} as job {job_id}")
    return 0


def gaps(args: argparse.Namespace) -> int:
    """The intervals in which deliveries could not be taken, newest first, with what to do."""
    from service.stores.gaps import GapStore

    found = _with_redis(lambda redis: GapStore(redis).list(args.limit))
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


def events(args: argparse.Namespace) -> int:
    """`events tail`: the newest lifecycle events, then each new one as it is derived."""
    from service.stores.lifecycle import LifecycleStream

    settings = _settings(require_secrets=False)
    if args.type is not None and (refusal := _not_a_lifecycle_type(args.type)):
        return fail(refusal)

    def wanted(event: dict[str, Any]) -> bool:
        return args.type in (None, event.get("type")) and args.company in (None, event.get("companyId"))

    def show_line(event: dict[str, Any]) -> None:
        if args.json:
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

    async def tail(redis: Any) -> None:
        stream = LifecycleStream(redis, settings.events_stream)
        recent = await stream.recent(args.last, kind=args.type, company_id=args.company)
        if not recent and args.last > 0:  # on stderr: stdout holds events only
            which = " ".join(filter(None, (args.type, args.company and f"of company {args.company}")))
            waiting = "; waiting for new ones (Ctrl-C stops)" if args.follow else ""
            print(f"codat-webhooks: no {which + ' ' if which else ''}lifecycle events yet{waiting}", file=sys.stderr)
        for event in reversed(recent):
            show_line(event)
        newest = await redis.xrevrange(settings.events_stream, count=1)
        after = newest[0][0] if newest else "0-0"
        while args.follow:
            after, found = await stream.follow(after)
            for event in filter(wanted, found):
                show_line(event)

    try:
        _with_redis(tail)
    except KeyboardInterrupt:
        pass
    return 0


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


def reconcile(args: argparse.Namespace) -> int:
    from service.core import logs
    from workers.deps import Deps
    from workers.reconcile import run_once

    settings = _settings(require_secrets=False)
    if not settings.codat_api_key:
        return fail("CODAT_API_KEY is not set: the reconcile reads Codat's API")
    logs.configure(settings.log_level, settings.log_format, secrets=settings.credentials())

    async def run(redis: Any) -> dict[str, Any]:
        deps = Deps.build(settings, redis)
        try:
            return await run_once(deps, company_id=args.company, dry_run=args.dry_run)
        finally:
            await deps.aclose()

    summary = _with_redis(run)
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    return 1 if summary.get("error") else 0


def status(args: argparse.Namespace) -> int:
    from service import status as checks

    found = checks.run(devenv.merged())
    print(f"codat-webhooks {_version()}")
    print(checks.render(found))
    return EXIT_OK if all(check.ok for check in found) else EXIT_NO


def _dev(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from importlib.metadata import entry_points

        missing = (
            f"`codat-webhooks {name}` is dev tooling, not part of this install ({{}}): "
            "install the project with its dev extra, `pip install -e '.[dev]'`"
        )
        found = entry_points(group=DEV_COMMAND_GROUP, name=name)
        if not found:
            return fail(missing.format("no such command registered"))
        try:
            command: Callable[[argparse.Namespace], int] = next(iter(found)).load()
        except ImportError as exc:
            return fail(missing.format(f"{exc.name} is missing"))
        return command(args)

    return run


# What the tool commands say they read: the environment, then a running dev stack's values.
DEV_ENV = "; where the environment leaves one unset, the value of a `make run` running in this checkout (.data/dev.env)"
CODAT_ENV = "CODAT_API_KEY, CODAT_BASE_URL (default https://api.codat.io)" + DEV_ENV
REDIS_ENV = "REDIS_URL" + DEV_ENV


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("codat-webhooks")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    global _process
    parser = argparse.ArgumentParser(
        prog="codat-webhooks",
        description=__doc__,
        epilog="exit status: 0 done; 1 the answer was no (not found, or Codat said no); 2 a setting or an "
        "argument is wrong; 3 Redis, Codat or the service did not answer; 4 `dev` already runs in this checkout",
    )
    parser.add_argument("--version", action="version", version=f"codat-webhooks {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, func: Callable[[argparse.Namespace], int], help: str, *, reads: str = ""
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help, epilog=f"reads: {reads}" if reads else None)
        sub.set_defaults(func=func)
        return sub

    command(
        "dev",
        _dev("dev"),
        "run web + worker (Procfile), with an embedded Valkey, a generated signing secret "
        "and the local Codat sandbox wherever the environment has none; Ctrl-C stops it all",
        reads="REDIS_URL, CODAT_WEBHOOK_SECRETS, CODAT_API_KEY (each unset: the dev stand-in), PORT (8000), "
        "HOST (127.0.0.1), LOG_FORMAT (console), and everything web and worker read",
    )
    command(
        "demo",
        _dev("demo"),
        "run Codat's quick-start end to end against the sandbox; exit 0 once the "
        "initial sync was requested and its read-completed event recorded",
        reads="nothing: it runs its own Valkey, sandbox, web and worker on free ports, with throwaway data",
    )
    sub = command(
        "web",
        web,
        "run the web process (POST /webhooks/codat) on $PORT",
        reads="REDIS_URL, CODAT_WEBHOOK_SECRETS, CODAT_WEBHOOK_AUTH, WEBHOOK_TOLERANCE_SECONDS, OPS_TOKEN, PORT, "
        "HOST, LOG_LEVEL, LOG_FORMAT",
    )
    sub.add_argument(
        "--host", default=os.environ.get("HOST", "0.0.0.0"), help="address to bind (default: $HOST, else 0.0.0.0)"
    )
    sub.add_argument(
        "--http",
        choices=["auto", "httptools", "h11"],
        default="auto",
        help="HTTP parser (default: httptools where installed, else h11)",
    )
    sub = command(
        "worker",
        worker,
        "run the arq worker",
        reads="REDIS_URL, CODAT_API_KEY, CODAT_BASE_URL, CODAT_SYNC_DATA_TYPES, WORKER_JOB_TIMEOUT, "
        "WORKER_SHUTDOWN_WAIT, WORKER_METRICS_PORT, WORKER_RETRY_BASE_SECONDS, CODAT_HANDLERS (a module on the path: "
        'README "Lifecycle events"), LOG_LEVEL, LOG_FORMAT',
    )
    sub.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    sub = command(
        "sandbox",
        _dev("sandbox"),
        "run the local Codat API (sandbox/)",
        reads="SANDBOX_API_KEY, SANDBOX_WEBHOOK_URL, SANDBOX_WEBHOOK_SECRET, SANDBOX_PUBLIC_URL, "
        "SANDBOX_TIME_SCALE, SANDBOX_PULL_STEP_SECONDS, SANDBOX_ALLOW_ANY_HOST",
    )
    sub.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a container)")
    sub.add_argument("--port", type=int, default=8400, help="port to listen on (default 8400)")

    sub = command(
        "send",
        _dev("send"),
        "send an example event from Codat's Webhooks.json, signed, to the service; against the sandbox "
        "(as `make run` has it) the example's company and connection are first made there, so the "
        "event is carried through to a real outcome",
        reads="PORT, CODAT_WEBHOOK_SECRETS, CODAT_BASE_URL, CODAT_API_KEY, REDIS_URL" + DEV_ENV,
    )
    sub.add_argument("event_type", nargs="?", help="e.g. connection.connected (--list shows them all)")
    sub.add_argument("--example", help="which of the type's examples (default: the first)")
    sub.add_argument("--url", help="where to post it (default: http://127.0.0.1:$PORT/webhooks/codat)")
    sub.add_argument("--secret", help="signing secret (default: CODAT_WEBHOOK_SECRETS, else the dev one)")
    sub.add_argument("--list", action="store_true", help="list the event types and their examples")
    sub.add_argument(
        "--keep-ids",
        action="store_true",
        help="send the example's own company and connection ids, even against the sandbox (which does not know them)",
    )
    sub.add_argument(
        "--no-wait", action="store_true", help="do not wait for the worker's outcome (default: up to 15 s)"
    )
    sub = command("register", register, "register a webhook consumer URL with Codat (POST /webhooks)", reads=CODAT_ENV)
    sub.add_argument("url", help="e.g. https://hooks.example.com/webhooks/codat")
    sub.add_argument("--event-type", action="append", help="subscribe to this type (repeat; default: all)")
    sub = command("company", company, "create a company in Codat (POST /companies)", reads=CODAT_ENV)
    sub.add_argument("name", help="the company's name, e.g. 'Platypus Properties'")
    sub.add_argument("--platform", default="mqjo", help="platform key (default mqjo, the Sandbox)")
    sub = command("link", _dev("link"), "sandbox only: finish Link for a company, as its SMB would", reads=CODAT_ENV)
    sub.add_argument("company_id", help="the id `codat-webhooks company` printed")
    sub.add_argument("--platform", default="mqjo", help="platform key of the connection (default mqjo)")

    sub = command(
        "reconcile",
        reconcile,
        "compare the service's state with Codat's API now (as the workers do every RECONCILE_INTERVAL_SECONDS) "
        "and request initial syncs that were missed; reads REDIS_URL, CODAT_API_KEY, CODAT_BASE_URL",
    )
    sub.add_argument("--company", help="only this company (its id)")
    sub.add_argument("--dry-run", action="store_true", help="report what is out of line, change nothing")
    sub = command(
        "events",
        events,
        "follow the lifecycle events (connection.linked, sync.completed, ...) the workers derive",
        reads=f"{REDIS_ENV}, CODAT_EVENTS_STREAM",
    )
    sub.add_argument("action", choices=["tail"], help="print the newest, then follow")
    sub.add_argument("--type", help="only this event type, e.g. connection.linked")
    sub.add_argument("--company", help="only this company (its id)")
    sub.add_argument("--last", type=int, default=10, help="how many of the newest to print first (default 10)")
    sub.add_argument("--no-follow", dest="follow", action="store_false", help="print the newest and stop")
    sub.add_argument("--json", action="store_true", help="one JSON object a line instead of a short line")
    sub = command(
        "gaps",
        gaps,
        "list the intervals in which the service could not take Codat's deliveries (503s, no web running, "
        "the consumer disabled), newest first, with what to do in Codat's Portal",
        reads=REDIS_ENV,
    )
    sub.add_argument("--limit", type=int, default=50, help="how many to list, newest first (default 50)")
    sub.add_argument("--json", action="store_true", help="one JSON object a line")
    sub = command("connection", connection, "show a connection's reconciled state, as JSON", reads=REDIS_ENV)
    sub.add_argument("connection_id", help="Codat's connectionId (a UUID)")
    sub = command("dead-letters", dead_letters, "list dead letters, or replay one by id", reads=REDIS_ENV)
    sub.add_argument("action", choices=["list", "replay"], help="list them (newest first), or replay one")
    sub.add_argument("id", nargs="?", help="the dead letter to replay")
    sub.add_argument("--limit", type=int, default=100, help="how many to list, newest first")
    command(
        "secret",
        _dev("secret"),
        "print the dev signing secret (made on first use, kept in .data/webhook-secret at the checkout's root)",
        reads="CODAT_DATA_DIR (default: .data at the checkout's root)",
    )
    command(
        "env",
        _dev("env"),
        'print the running `make run`\'s settings as export lines, for a shell: eval "$(codat-webhooks env)"',
        reads="CODAT_DATA_DIR (default: .data at the checkout's root)",
    )
    command(
        "status",
        status,
        "say what is running, where, and what is misconfigured; exit 0 only if all of it answers",
        reads="every setting web and worker read, PORT" + DEV_ENV,
    )

    args = parser.parse_args(argv)
    _process = args.command in PROCESSES
    try:
        return int(args.func(args) or 0)
    except httpx.UnsupportedProtocol:  # e.g. --url without http://
        url = getattr(args, "url", None) or "the URL"
        return fail(f"{url!r} is not an http(s) URL: write http://HOST:PORT/...")
    except httpx.TransportError as exc:
        return fail(_unreachable(args, exc), EXIT_UNREACHABLE)
    except httpx.InvalidURL as exc:
        return fail(f"not a URL: {exc}")
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `codat-webhooks send --list | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _unreachable(args: argparse.Namespace, exc: httpx.TransportError) -> str:
    """What to do when an HTTP peer did not answer: the service for `send`, Codat for the rest."""
    try:
        url = exc.request.url
        where = f"{url.scheme}://{url.netloc.decode()}"
    except RuntimeError:  # no request attached
        where = "the server"
    reason = type(exc).__name__
    if args.command == "send":
        return f"nothing answers at {where} ({reason}): start the service (`make run`), or give --url"
    return (
        f"Codat at {where} does not answer ({reason}): check CODAT_BASE_URL, or start `make run`, "
        "which runs the sandbox"
    )


if __name__ == "__main__":
    sys.exit(main())
