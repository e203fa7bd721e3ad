"""`web` and `worker`: the long-running processes (the Procfile's). Their refusals are log lines
(process.refused_to_start), read by a log pipeline, not plain words for a person; they read their
environment only, never a dev stack's values."""

from __future__ import annotations

import argparse
import asyncio

from service.cli.common import EXIT_CONFIG
from service.core import redisurl
from service.core.config import ConfigError, Settings


def refuse(message: str, code: int = EXIT_CONFIG) -> int:
    """The one line a process prints when it will not start, then `code`."""
    from service.core.logs import refuse

    refuse(message)
    return code


def web(args: argparse.Namespace) -> int:
    import uvicorn

    from service.web import httpserver
    from service.web.app import create_app

    settings = _settings(require_secrets=True)
    _require_redis(settings)
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=settings.port,
        loop="uvloop",
        # Either parser with the same bound on a request's head (service/web/httpserver.py).
        http=httpserver.protocol(args.http),
        log_config=None,  # service.core.logs owns the log format
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
    if unset := settings.unset_for("worker"):
        return refuse(unset.refusal())
    if settings.handlers:  # refused here, as one line, not as a crash in arq's startup
        from workers.handlers import HandlersRefused, load

        try:
            load(settings.handlers)
        except HandlersRefused as exc:
            return refuse(str(exc))
    _require_redis(settings)
    logs.configure(settings.log_level, settings.log_format, secrets=settings.credentials())
    create_worker(settings, burst=args.burst).run()
    return 0


def _settings(require_secrets: bool) -> Settings:
    try:
        return Settings.from_env(require_secrets=require_secrets)
    except ConfigError as exc:
        # One line, then out: a process manager shows it as the reason the process stopped.
        raise SystemExit(refuse(str(exc))) from None


def _require_redis(settings: Settings, wait_seconds: float = 10.0, loading_seconds: float = 300.0) -> None:
    """Before a process starts: REDIS_URL is usable and Redis answers. Otherwise one line naming
    where it was looked for (never the password), and exit 2. Waits a little, so that a Redis
    started alongside (compose, a pod's sidecar) or restarting (its process replaced: seconds) is
    not refused for being late; and while Redis answers that it is loading its data, as long as
    that lasts, up to `loading_seconds`. "Most commands, including PING, return this error while
    Redis is loading [...] Wait for loading to finish, and then send the command again. The bigger
    your dataset is, the longer loading takes" (https://redis.io/docs/latest/develop/reference/
    errors/common/loading/): a restarted Redis reading its append-only file answers so."""
    import time

    from redis.exceptions import BusyLoadingError

    try:
        target = redisurl.parse(settings.redis_url)
    except redisurl.RedisUrlError as exc:
        raise SystemExit(refuse(str(exc))) from None
    from service.status import redis_trouble

    started = time.monotonic()
    deadline = started + wait_seconds
    while True:
        error = _ping(settings.redis_url)
        if error is None:
            return
        what, todo, setting = redis_trouble(error)
        if setting:  # waiting does not mend a wrong password or port
            raise SystemExit(refuse(f"Redis at {target.where()} {what}: {todo}"))
        if isinstance(error, BusyLoadingError):
            deadline = max(deadline, min(started + loading_seconds, time.monotonic() + wait_seconds))
        if time.monotonic() >= deadline:
            raise SystemExit(refuse(f"Redis at {target.where()} {what}: start it, or fix REDIS_URL"))
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
