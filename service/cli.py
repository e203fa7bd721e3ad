"""`codat-webhooks`: the command-line tool. `codat-webhooks COMMAND --help` for each command."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from service.config import ConfigError, Settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _settings(require_secrets: bool = True) -> Settings:
    try:
        return Settings.from_env(require_secrets=require_secrets)
    except ConfigError as exc:
        # One line, then out: a process manager shows it as the reason the process stopped.
        print(f"codat-webhooks: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def web(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app

    settings = _settings()
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_config=None,  # service.logs owns the log format
        access_log=False,  # one line per delivery is written by the endpoint itself
        # Deliveries are trusted by signature, never by address, and no line logs the peer:
        # rewriting the client address from X-Forwarded-For would be work for nothing.
        proxy_headers=False,
        timeout_graceful_shutdown=20,
    )
    return 0


def worker(args: argparse.Namespace) -> int:
    from arq.connections import RedisSettings
    from arq.worker import run_worker

    from service import logs
    from workers.settings import WorkerSettings

    settings = _settings(require_secrets=False)
    if not settings.codat_api_key:
        print("codat-webhooks: CODAT_API_KEY is not set: give the Codat API key, or start through "
              "`codat-webhooks dev` for the local sandbox", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format, secrets=settings.credentials())
    run_worker(
        WorkerSettings,  # type: ignore[arg-type]
        redis_settings=RedisSettings.from_dsn(settings.redis_url),
        burst=args.burst,
        job_timeout=settings.job_timeout_seconds,
        ctx={"settings": settings},
    )
    return 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_sandbox(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The local Codat API, for a dev run with no Codat account."""
    from sandbox.app import DEV_API_KEY

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sandbox", "--port", str(port)], env=env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    env["CODAT_BASE_URL"] = f"http://127.0.0.1:{port}"
    env["CODAT_API_KEY"] = DEV_API_KEY
    print(f"dev: sandbox Codat API at {env['CODAT_BASE_URL']} (no CODAT_API_KEY given)", file=sys.stderr)
    return proc


def dev(args: argparse.Namespace) -> int:
    from service import devmode

    env = dict(os.environ)
    valkey = None
    sandbox = _start_sandbox(env) if not env.get("CODAT_API_KEY") else None
    if not env.get("REDIS_URL"):
        valkey = devmode.start_valkey()
        env["REDIS_URL"] = valkey.connection_url
        print(f"dev: embedded Valkey at {valkey.connection_url} (dev only; data in {valkey.data_dir})",
              file=sys.stderr)
    if not env.get("CODAT_WEBHOOK_SECRETS"):
        env["CODAT_WEBHOOK_SECRETS"] = devmode.signing_secret()
        print(f"dev: signing secret {env['CODAT_WEBHOOK_SECRETS']} (kept in {devmode.DATA_DIR})",
              file=sys.stderr)
    env.setdefault("PORT", "8000")
    env.setdefault("LOG_FORMAT", "console")
    bin_dir = Path(sys.executable).parent
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    honcho = shutil.which("honcho", path=env["PATH"]) or "honcho"
    print(f"dev: webhooks at http://127.0.0.1:{env['PORT']}/webhooks/codat", file=sys.stderr)
    try:
        return subprocess.call([honcho, "start", "-f", str(PROJECT_ROOT / "Procfile"),
                                "-d", str(PROJECT_ROOT)], env=env)
    except KeyboardInterrupt:
        return 0
    finally:
        if sandbox is not None:
            sandbox.terminate()
        if valkey is not None:
            valkey.stop()


def _with_redis(action: Callable[[Any], Awaitable[Any]]) -> Any:
    from service.queue import connect

    settings = _settings(require_secrets=False)

    async def run() -> Any:
        redis = connect(settings.redis_url)
        try:
            return await action(redis)
        finally:
            await redis.aclose()

    return asyncio.run(run())


def connection(args: argparse.Namespace) -> int:
    from service.connections import ConnectionStore

    state = _with_redis(lambda redis: ConnectionStore(redis).get(args.connection_id))
    if state is None:
        print(f"no state for connection {args.connection_id}", file=sys.stderr)
        return 1
    print(orjson.dumps(state, option=orjson.OPT_INDENT_2).decode())
    return 0


def dead_letters(args: argparse.Namespace) -> int:
    from service.deadletters import DeadLetters

    if args.action == "list":
        letters = _with_redis(lambda redis: DeadLetters(redis).list(args.limit))
        for letter in letters:
            event = letter["event"]
            print(orjson.dumps({k: letter[k] for k in ("id", "reason", "status", "error", "attempts")}
                               | {"eventType": event["event_type"], "webhookId": event["message_id"],
                                  "connectionId": event["connection_id"]}).decode())
        return 0
    if not args.id:
        print("dead-letters replay needs a dead letter id", file=sys.stderr)
        return 2
    job_id = _with_redis(lambda redis: DeadLetters(redis).replay(args.id))
    if job_id is None:
        print(f"no dead letter {args.id}", file=sys.stderr)
        return 1
    print(f"replayed {args.id} as job {job_id}")
    return 0


def sandbox(args: argparse.Namespace) -> int:
    return subprocess.call([sys.executable, "-m", "sandbox", "--port", str(args.port)])


def secret(args: argparse.Namespace) -> int:
    from service import devmode

    print(devmode.signing_secret())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="codat-webhooks", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("dev", help="run web + worker (Procfile), with embedded Valkey and a "
                            "generated signing secret where the environment has none")
    p.set_defaults(func=dev)

    p = commands.add_parser("web", help="run the web process (POST /webhooks/codat) on $PORT")
    p.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"), help="address to bind")
    p.set_defaults(func=web)

    p = commands.add_parser("worker", help="run the arq worker")
    p.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    p.set_defaults(func=worker)

    p = commands.add_parser("secret", help="print the dev signing secret (made on first use)")
    p.set_defaults(func=secret)

    p = commands.add_parser("connection", help="show a connection's reconciled state")
    p.add_argument("connection_id")
    p.set_defaults(func=connection)

    p = commands.add_parser("dead-letters", help="list dead letters, or replay one by id")
    p.add_argument("action", choices=["list", "replay"])
    p.add_argument("id", nargs="?", help="the dead letter to replay")
    p.add_argument("--limit", type=int, default=100, help="how many to list, newest first")
    p.set_defaults(func=dead_letters)

    p = commands.add_parser("sandbox", help="run the local Codat API (sandbox/) on loopback")
    p.add_argument("--port", type=int, default=8400)
    p.set_defaults(func=sandbox)

    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
