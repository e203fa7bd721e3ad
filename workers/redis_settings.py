"""arq's RedisSettings from REDIS_URL (service.core.redisurl), the sentinel form included, and
the Sentinel-managed pool the worker runs on (`sentinel_pool`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from arq.connections import ArqRedis, RedisSettings
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

from service.core import redisurl

# As the web's client (service.stores.client): a frozen primary, or a sentinel that stopped
# answering, turns into an error within seconds instead of a worker hung on a read. Above the
# longest wait the worker asks for on purpose: XREADGROUP's BLOCK 1000 (workers.handlers) and
# WAIT's REDIS_REPLICA_TIMEOUT_MS (at most 1.5 s, service.core.config).
CONNECT_TIMEOUT_SECONDS = 1.0
READ_TIMEOUT_SECONDS = 2.0


@dataclass
class SentinelSettings(RedisSettings):
    """arq's settings, plus the read timeout its own Sentinel pool has no field for (arq 0.28
    builds that pool with no socket timeouts at all)."""

    socket_timeout: float = READ_TIMEOUT_SECONDS


def redis_settings(url: str) -> RedisSettings:
    target = redisurl.parse(url)
    if target.sentinel_master:
        # The worker asks the sentinels for the master (`sentinel_pool`) and follows a failover.
        return SentinelSettings(
            host=list(target.hosts),  # type: ignore[arg-type]  # arq takes a list of sentinels here
            sentinel=True,
            sentinel_master=target.sentinel_master,
            database=target.database,
            username=target.username,
            password=target.password,
            ssl=target.tls,
            conn_timeout=CONNECT_TIMEOUT_SECONDS,  # type: ignore[arg-type]  # arq says int, means seconds
        )
    return RedisSettings.from_dsn(url)


async def sentinel_pool(settings: RedisSettings, **arq_fields: Any) -> ArqRedis:
    """What arq's create_pool builds for a sentinel setting, with socket timeouts on the
    sentinels and on the master's connections. `arq_fields`: job_serializer, job_deserializer,
    default_queue_name, expires_extra_ms, set on the pool as arq does."""
    timeouts = {
        "socket_connect_timeout": settings.conn_timeout,
        "socket_timeout": getattr(settings, "socket_timeout", READ_TIMEOUT_SECONDS),
    }
    sentinels = Sentinel(
        settings.host,  # type: ignore[arg-type]  # the sentinels' (host, port) list
        sentinel_kwargs=timeouts,
        ssl=settings.ssl,
        db=settings.database,
        username=settings.username,
        password=settings.password,
        **timeouts,
    )
    pool: ArqRedis = sentinels.master_for(settings.sentinel_master, redis_class=ArqRedis)
    for name, value in arq_fields.items():
        setattr(pool, name, value)
    # As arq: a few tries before giving up at startup (a failover may be under way).
    for attempt in range(settings.conn_retries + 1):
        try:
            await pool.ping()
            return pool
        except (TimeoutError, RedisError, OSError):
            if attempt == settings.conn_retries:
                raise
            await asyncio.sleep(settings.conn_retry_delay)
    raise AssertionError("unreachable")
