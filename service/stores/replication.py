"""Acknowledged means replicated: a write that ends someone else's retries (a delivery's 2xx,
the first-sync claim before its Codat call) is confirmed by REDIS_MIN_REPLICAS replicas first.

Redis replicates asynchronously: "the primary answered" is lost with the primary if it dies, or
is demoted, before its replicas have the write. `WAIT n timeout` answers how many replicas hold
everything the calling connection has written so far, so it must run on the connection that
wrote: here it goes in the same pipeline as the write (one round trip, `transaction=False`).

And a primary that is no longer the primary is noticed without a restart (`PrimaryWatch`):
a failing WAIT or a READONLY answer drops every pooled connection so that the next one asks the
sentinels again, and the sentinels are asked once a second all the same (a primary cut off from
the sentinels but not from us keeps answering as a primary, and with N=0 nothing else tells).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from dataclasses import dataclass
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import ConnectionError, NoScriptError, RedisError, TimeoutError

from service.core.config import Settings
from service.stores.scripts import load, lost_scripts

log = structlog.get_logger(__name__)

# How often the sentinels are asked which node is the primary, while the process runs.
WATCH_INTERVAL_SECONDS = 1.0


class NotReplicated(RedisError):
    """Fewer replicas than required confirmed the write in time: it may be lost in a failover,
    so it must not be acknowledged (the web answers 503, a job retries)."""


@dataclass(frozen=True)
class Replication:
    replicas: int = 0  # 0: the primary's answer is enough (a single Redis, the dev default)
    timeout_ms: int = 1000

    @classmethod
    def of(cls, settings: Settings) -> Replication:
        return cls(settings.redis_min_replicas, settings.redis_replica_timeout_ms)


PRIMARY_ONLY = Replication()  # today's behaviour: the primary's answer is enough


async def execute(redis: Redis, pipe: Pipeline, replication: Replication) -> list[Any]:
    """Run `pipe` (transaction=False, the writes staged) and, in the same round trip on the
    same connection, WAIT for the replicas. The pipeline's answers, the WAIT's left off; raises
    the first command's error as redis-py does, or NotReplicated when too few replicas confirmed.

    A staged script (scripts.Script.stage, EVALSHA) is loaded before its first pipeline. One that
    Redis has lost since (restarted, or a replica promoted) ran nothing: it is loaded again, and
    those calls alone sent again with a WAIT of their own (the first WAIT confirmed the rest of
    the first pipeline). Unless that first WAIT already fell short: then the answer is
    NotReplicated whatever the retry would do, and nothing is sent again."""
    staged = [args for args, _ in pipe.command_stack]  # execute() empties it
    await load(redis, staged)
    results, acknowledged = await _send(redis, pipe, replication)
    if (lost := lost_scripts(results)) and acknowledged >= replication.replicas:
        await load(redis, [staged[i] for i in lost], again=True)
        again = redis.pipeline(transaction=False)
        for i in lost:
            again.execute_command(*staged[i])
        retried, acknowledged = await _send(redis, again, replication)
        for i, result in zip(lost, retried, strict=True):
            results[i] = result
    for result in results:
        if isinstance(result, Exception) and not (lost and isinstance(result, NoScriptError)):
            raise result
    if replication.replicas and acknowledged < replication.replicas:
        if acknowledged == 0:
            # No replica at all: most likely a primary the others have left (cut off and
            # replaced, or demoted): ask the sentinels again rather than keep writing to it.
            await drop_connections(redis, "no_replica_acknowledged")
        raise NotReplicated(f"{acknowledged} of {replication.replicas} replicas confirmed the write")
    for result in results:  # a NOSCRIPT left: raised as the error it is
        if isinstance(result, Exception):
            raise result
    return results


async def _send(redis: Redis, pipe: Pipeline, replication: Replication) -> tuple[list[Any], int]:
    """The pipeline's answers, errors in place (raise_on_error=False), and how many replicas
    confirmed them (0 when none are required)."""
    if replication.replicas:
        pipe.execute_command("WAIT", replication.replicas, replication.timeout_ms)
    try:
        results: list[Any] = await pipe.execute(raise_on_error=False)
    except ConnectionError as exc:
        # redis-py turns READONLY from a Sentinel-managed primary into a ConnectionError ("now a
        # slave"): every pooled connection is on that node, not only the one that heard it.
        if "slave" in str(exc) or "READONLY" in str(exc):
            await drop_connections(redis, "readonly")
        raise
    if not replication.replicas:
        return results, 0
    acknowledged = results.pop()
    if isinstance(acknowledged, Exception):
        raise acknowledged
    return results, int(acknowledged)


async def drop_connections(redis: Redis, reason: str) -> None:
    """Every connection of the pool, in use or not: the next command connects again, and a
    Sentinel-managed pool asks the sentinels which node is the primary now."""
    log.warning("redis.connections_dropped", reason=reason)
    await redis.connection_pool.disconnect(inuse_connections=True)


class PrimaryWatch:
    """The role check: asks the sentinels which node is the primary, at most once per interval,
    and drops every connection (in use ones too) when it is no longer the one they went to.
    Nothing to do for a plain redis:// URL: the address is fixed."""

    def __init__(self, redis: Redis, interval: float = WATCH_INTERVAL_SECONDS) -> None:
        self._redis = redis
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    @property
    def watching(self) -> bool:
        return isinstance(self._redis.connection_pool, SentinelConnectionPool)

    def start(self) -> None:
        """Watch in the background from now on (idempotent)."""
        if self.watching and (self._task is None or self._task.done()):
            # Its own empty context: not the log context of the delivery that started it.
            self._task = asyncio.create_task(self._run(), context=contextvars.Context())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.check()
            except (RedisError, OSError):
                pass  # no sentinel answers: the connections keep what they have
            await asyncio.sleep(max(0.0, self._interval - (time.monotonic() - started)))

    async def check(self) -> bool:
        """True when the primary moved (and the connections were dropped)."""
        pool = self._redis.connection_pool
        if not isinstance(pool, SentinelConnectionPool):
            return False
        before = pool.master_address
        try:
            # Updates pool.master_address, and drops the idle connections if it changed.
            now = await pool.get_master_address()
        except (ConnectionError, TimeoutError):
            return False
        if before is None or tuple(before) == tuple(now):
            return False
        log.warning("redis.primary_moved", was=f"{before[0]}:{before[1]}", now=f"{now[0]}:{now[1]}")
        await drop_connections(self._redis, "primary_moved")
        return True
