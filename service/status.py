"""`codat-webhooks status`: what is running, where, and what is misconfigured.

Each check is one line: a name, where it looked, what it found. It reads the settings as the
command-line tool does (the environment, then a running `make run`'s .data/dev.env), and never
prints a secret: Redis by host and port, Codat by its base URL, keys only as set or not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from service.core import devenv, redisurl
from service.core.config import ConfigError, Settings


@dataclass
class Check:
    name: str
    ok: bool
    line: str


def run(env: Mapping[str, str]) -> list[Check]:
    checks = [_dev_stack()]
    checks += _settings(env)
    checks.append(_redis(env.get("REDIS_URL", "")))
    checks.append(_web(env))
    checks.append(_codat(env))
    return checks


def render(checks: list[Check]) -> str:
    return "\n".join(f"{'ok ' if c.ok else 'NO '} {c.name:<9} {c.line}" for c in checks)


def _dev_stack() -> Check:
    pid = devenv.running_pid()
    if pid:
        return Check("dev", True, f"`make run` is running in this checkout (pid {pid}; its settings: {devenv.path()})")
    # Not a failure: production runs no dev stack.
    return Check("dev", True, f"no `make run` in this checkout ({devenv.CHECKOUT})")


def _settings(env: Mapping[str, str]) -> list[Check]:
    found = []
    for process, require_secrets, extra in (("web", True, ""), ("worker", False, "CODAT_API_KEY")):
        try:
            Settings.from_env(env, require_secrets=require_secrets)
            if extra and not env.get(extra):
                raise ConfigError(f"{extra} is not set")
            redisurl.parse(env.get("REDIS_URL", ""))
        except (ConfigError, redisurl.RedisUrlError) as exc:
            found.append(Check(f"{process} env", False, f"would refuse to start: {exc}"))
        else:
            found.append(Check(f"{process} env", True, "settings are complete and valid"))
    return found


def _redis(url: str) -> Check:
    if not url:
        return Check("redis", False, "REDIS_URL is not set (and no `make run` is running here)")
    try:
        where = redisurl.parse(url).where()
    except redisurl.RedisUrlError as exc:
        return Check("redis", False, str(exc))
    try:
        depth, letters, polling = asyncio.run(_read_redis(url))
    except Exception as exc:  # any failure to reach it is the answer here
        return Check("redis", False, f"{where} does not answer ({type(exc).__name__})")
    workers = "a worker is polling" if polling else "NO worker is polling"
    letters_text = f"{letters} dead letter{'' if letters == 1 else 's'}"
    return Check("redis", True, f"{where} answers: {depth} jobs queued, {letters_text}, {workers}")


async def _read_redis(url: str) -> tuple[int, int, bool]:
    from service.stores import keys
    from service.stores.client import connect

    redis = connect(url)
    try:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.zcard(keys.QUEUE_NAME)
            pipe.hlen(keys.DEAD_LETTERS)
            pipe.exists(keys.HEALTH_CHECK)
            depth, letters, polling = await pipe.execute()
    finally:
        await redis.aclose()
    return int(depth), int(letters), bool(polling)


def _web(env: Mapping[str, str]) -> Check:
    base = f"http://127.0.0.1:{env.get('PORT') or '8000'}"
    try:
        health = httpx.get(f"{base}/healthz", timeout=2)
        ready = httpx.get(f"{base}/readyz", timeout=5)
    except httpx.HTTPError as exc:
        return Check("web", False, f"nothing answers at {base} ({type(exc).__name__}): is the web process running?")
    if health.status_code != 200:
        return Check("web", False, f"{base}/healthz answered HTTP {health.status_code}")
    if ready.status_code != 200:
        return Check("web", False, f"{base} is up but not ready: it cannot reach Redis (/readyz {ready.status_code})")
    return Check("web", True, f"{base} is up and ready; webhooks at {base}/webhooks/codat")


def _codat(env: Mapping[str, str]) -> Check:
    from workers.codat import basic_auth

    base = (env.get("CODAT_BASE_URL") or Settings.codat_base_url).rstrip("/")
    key = env.get("CODAT_API_KEY")
    if not key:
        return Check("codat", False, f"{base}: CODAT_API_KEY is not set, so no worker can call Codat")
    try:
        # One cheap authorised read: does Codat answer, and does it take the key?
        answer = httpx.get(
            f"{base}/companies",
            params={"page": 1, "pageSize": 1},
            headers={"Authorization": basic_auth(key)},
            timeout=5,
        )
    except httpx.HTTPError as exc:
        return Check("codat", False, f"{base} does not answer ({type(exc).__name__}): check CODAT_BASE_URL")
    if answer.status_code in (401, 403):
        return Check("codat", False, f"{base} refuses CODAT_API_KEY (HTTP {answer.status_code})")
    if answer.is_error:
        return Check("codat", False, f"{base} answered HTTP {answer.status_code}")
    return Check("codat", True, f"{base} answers and accepts CODAT_API_KEY")
