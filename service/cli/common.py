"""What every command of the tool shares: exit statuses, the one-line failure, the settings as
the tool reads them (the environment, then a running dev stack's), and Redis for a command."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from service.core import devenv, redisurl
from service.core.config import ConfigError, Settings

# Exit statuses (docs/operator/cli.md), so that a script can tell these apart.
EXIT_OK = 0
EXIT_NO = 1  # the answer was no: not found, or Codat (or the service) answered with an error
EXIT_CONFIG = 2  # a setting or an argument is missing or invalid: fix it and run again
EXIT_UNREACHABLE = 3  # Redis, Codat (or the sandbox) or the service did not answer
EXIT_RUNNING = 4  # `dev`: another dev stack already runs in this checkout


def fail(message: str, code: int = EXIT_CONFIG) -> int:
    """One line on stderr, in plain words, then `code`. (The web and worker processes refuse
    with a log line instead: service.cli.processes.refuse.)"""
    print(f"codat-webhooks: {message}", file=sys.stderr)
    return code


def settings(require_secrets: bool = False) -> Settings:
    """The settings as the tool reads them: the environment, then a running dev stack's values."""
    try:
        return Settings.from_env(devenv.merged(), require_secrets=require_secrets)
    except ConfigError as exc:
        raise SystemExit(fail(str(exc))) from None


def with_redis(action: Callable[[Any], Awaitable[Any]]) -> Any:
    """`action(redis)` on the service's Redis; one line and exit 2 or 3 if it cannot be used."""
    from redis.exceptions import RedisError

    from service.status import redis_trouble
    from service.stores.client import connect

    found = settings()
    try:
        where = redisurl.parse(found.redis_url).where()
    except redisurl.RedisUrlError as exc:
        raise SystemExit(fail(str(exc))) from None

    async def run() -> Any:
        redis = connect(found.redis_url)
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


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("codat-webhooks")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"
