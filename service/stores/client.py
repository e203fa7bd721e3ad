"""The Redis client the web process and the command-line tool use."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError, TimeoutError
from redis.retry import Retry

from service.core import redisurl


class _HiredisPackedConnection(Connection):
    """redis-py's sync client packs commands with hiredis (C); its asyncio client (5.x) packs
    them in Python, which cost more than verifying and parsing a delivery. Same packer, lent."""

    _packer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        return self._packer.pack(*args)


def connect(url: str) -> Redis:
    """A client that fails fast: Codat gives up on a delivery after 15 s, so a dead Redis
    must turn into a 503 within a few seconds, not a hang. One retry reconnects a pooled
    connection left broken by a Redis restart; the script is idempotent, so a retry after
    a lost reply only finds the message already recorded.

    A `redis+sentinel://` URL asks the sentinels for the master, and asks again when a failover
    moves it (redis-py's SentinelManagedConnection); RedisUrlError if the URL cannot be used."""
    target = redisurl.parse(url)
    fail_fast: dict[str, Any] = {
        "socket_connect_timeout": 1.0,
        "socket_timeout": 2.0,
        "retry": Retry(NoBackoff(), 1),
        "retry_on_error": [ConnectionError, TimeoutError],
    }
    if target.sentinel_master:
        sentinels = Sentinel(
            list(target.hosts),
            sentinel_kwargs={"socket_connect_timeout": 1.0, "socket_timeout": 2.0},
            db=target.database,
            username=target.username,
            password=target.password,
            ssl=target.tls,
            **fail_fast,
        )
        return sentinels.master_for(target.sentinel_master, redis_class=Redis)
    return Redis.from_url(
        url,
        **fail_fast,
        # For redis:// only; rediss:// and unix:// keep the class their scheme needs.
        connection_class=_HiredisPackedConnection,
    )
