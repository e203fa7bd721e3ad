"""`codat-webhooks status`: what is running, where, and what is misconfigured.

Each check is one line: a name, where it looked, what it found. It reads the settings as the
command-line tool does (the environment, then a running `make run`'s .data/dev.env), and never
prints a secret: Redis by host and port, Codat by its base URL, keys only as set or not.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import httpx
import orjson

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
    checks.append(_consumer(env))
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
    """Would each process start on these settings? What each requires is declared with the
    setting (service.core.config: `required`), as the processes themselves read it."""
    found = []
    for process in ("web", "worker"):
        try:
            settings = Settings.from_env(env, require_secrets=process == "web")
            if unset := settings.unset_for(process):
                raise ConfigError(f"{unset.env} is not set")
            redisurl.parse(env.get("REDIS_URL", ""))
            module = settings.handlers
            if process == "worker" and module and (refusal := handlers_refusal(module, env)):
                raise ConfigError(refusal)
        except (ConfigError, redisurl.RedisUrlError) as exc:
            found.append(Check(f"{process} env", False, f"would refuse to start: {exc}"))
        else:
            found.append(Check(f"{process} env", True, "settings are complete and valid"))
    return found


def handlers_refusal(module: str, env: Mapping[str, str], timeout: float = 30) -> str | None:
    """Why a worker would refuse CODAT_HANDLERS=module (workers.handlers.load), or None. Checked
    in a process of its own, on the worker's path (the checkout's handlers/ in dev, then
    PYTHONPATH; not the working directory), so that the integrator's code runs nowhere else."""
    from service.core import devenv

    child_env = {**os.environ, **env, "PYTHONPATH": devenv.python_path(env), "LOG_FORMAT": "json"}
    try:
        done = subprocess.run(
            [sys.executable, "-P", "-m", "workers.handlers", module],
            env=child_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return f"CODAT_HANDLERS={module}: importing it took over {timeout:.0f} s"
    if done.returncode == 0:
        return None
    for line in reversed(done.stderr.splitlines()):
        if line.startswith("{"):
            try:
                reason = orjson.loads(line).get("reason")
            except orjson.JSONDecodeError:
                continue
            if isinstance(reason, str):
                return reason
    last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
    return f"CODAT_HANDLERS={module}: the check failed: {last}"


def redis_trouble(exc: BaseException) -> tuple[str, str, bool]:
    """Why Redis could not be used, in words: (what happened, what to do, whether it is a setting
    to fix). Only the error's kind is named, never its text (it may hold the URL)."""
    from redis.exceptions import AuthenticationError, InvalidResponse, ResponseError

    kind = type(exc).__name__
    if isinstance(exc, AuthenticationError) or (
        isinstance(exc, ResponseError) and str(exc).startswith(("NOAUTH", "WRONGPASS", "NOPERM"))
    ):
        return f"refuses the credentials ({kind})", "fix the user or password in REDIS_URL", True
    if isinstance(exc, InvalidResponse):
        return f"answers, but not as Redis does ({kind})", "REDIS_URL's port is another service's", True
    if isinstance(exc, ResponseError):
        return f"answered with an error ({kind})", "is it Redis >= 6.2, or Valkey?", False
    return f"does not answer ({kind})", "", False


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
        what, todo, _ = redis_trouble(exc)
        return Check("redis", False, f"{where} {what}" + (f": {todo}" if todo else ""))
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
    base = f"http://127.0.0.1:{env.get('PORT') or Settings.port}"
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


def _consumer(env: Mapping[str, str]) -> Check:
    """The workers' consumer watch, as its last report in Redis has it (workers.delivery_watch)."""
    url = (env.get("PUBLIC_WEBHOOK_URL") or "").strip()
    if not url:
        return Check("consumer", True, "not watched: set PUBLIC_WEBHOOK_URL to this service's URL as Codat has it")
    try:
        report = asyncio.run(_read_report(env.get("REDIS_URL", "")))
    except Exception as exc:  # any failure to reach Redis is the answer here
        return Check("consumer", False, f"cannot read the consumer watch's report ({type(exc).__name__})")
    if report is None:
        return Check("consumer", True, f"{url}: not checked yet (the workers check every WATCH_INTERVAL_SECONDS)")
    problems = report.get("problems") or []
    if not problems:
        return Check("consumer", True, f"{url}: registered with Codat, enabled, every event type the service acts on")
    said = []
    for problem in problems:
        kind = problem["kind"]
        if kind == "missing":
            said.append("NO consumer in Codat for this URL: register it (codat-webhooks register)")
        elif kind == "disabled":
            said.append(
                f"consumer {problem['consumerId']} is DISABLED in Codat: re-enable it, then `codat-webhooks gaps`"
            )
        elif kind == "lacking_event_types":
            said.append(f"lacks event types {', '.join(problem['missingTypes'])}")
        elif kind == "duplicated":
            said.append(f"{len(problem['consumerIds'])} consumers for this URL: each message arrives that many times")
    return Check("consumer", False, f"{url}: " + "; ".join(said))


async def _read_report(url: str) -> dict | None:
    from service.stores.client import connect
    from service.stores.delivery_health import consumer_report

    redis = connect(url)
    try:
        return await consumer_report(redis)
    finally:
        await redis.aclose()
