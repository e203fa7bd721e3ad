"""`codat-webhooks`: the command-line tool. `codat-webhooks COMMAND --help` for each command."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

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
    logs.configure(settings.log_level, settings.log_format, secrets=settings.credentials())
    run_worker(
        WorkerSettings,  # type: ignore[arg-type]
        redis_settings=RedisSettings.from_dsn(settings.redis_url),
        burst=args.burst,
        ctx={"settings": settings},
    )
    return 0


def dev(args: argparse.Namespace) -> int:
    from service import devmode

    env = dict(os.environ)
    valkey = None
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
        if valkey is not None:
            valkey.stop()


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

    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
