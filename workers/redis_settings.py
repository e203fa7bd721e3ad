"""arq's RedisSettings from REDIS_URL (service.core.redisurl), the sentinel form included."""

from __future__ import annotations

from arq.connections import RedisSettings

from service.core import redisurl


def redis_settings(url: str) -> RedisSettings:
    target = redisurl.parse(url)
    if target.sentinel_master:
        # arq asks the sentinels for the master (redis-py's Sentinel) and follows a failover.
        return RedisSettings(
            host=list(target.hosts),  # type: ignore[arg-type]  # arq takes a list of sentinels here
            sentinel=True,
            sentinel_master=target.sentinel_master,
            database=target.database,
            username=target.username,
            password=target.password,
            ssl=target.tls,
        )
    return RedisSettings.from_dsn(url)
