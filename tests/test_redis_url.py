"""REDIS_URL's forms (service.core.redisurl), and the clients built from them for the web process
(service.stores.client) and the workers (workers.redis_settings), Sentinel included."""

from __future__ import annotations

import pytest
from redis.asyncio.sentinel import SentinelConnectionPool

from service.core.redisurl import RedisUrlError, parse
from service.stores.client import connect
from workers.redis_settings import redis_settings

PASSWORD = "s3cret-Redis-pw"


def test_plain_tls_and_unix_forms() -> None:
    plain = parse(f"redis://:{PASSWORD}@cache.internal:6380/2")
    assert plain.hosts == (("cache.internal", 6380),) and plain.database == 2 and plain.password == PASSWORD
    assert not plain.sentinel and not plain.tls and plain.where() == "cache.internal:6380"
    tls = parse("rediss://user:pw@cache.internal")
    assert tls.tls and tls.username == "user" and tls.hosts == (("cache.internal", 6379),)
    assert parse("redis://h?db=4").database == 4
    assert parse("unix:///run/redis.sock").where() == "/run/redis.sock"


def test_sentinel_form() -> None:
    target = parse(f"redis+sentinel://:{PASSWORD}@s1.internal:26379,s2.internal,[::1]:26380/mymaster/3")
    assert target.sentinel and target.sentinel_master == "mymaster"
    assert target.hosts == (("s1.internal", 26379), ("s2.internal", 26379), ("::1", 26380))
    assert target.database == 3 and target.password == PASSWORD and not target.tls
    assert target.where() == "s1.internal:26379,s2.internal:26379,::1:26380 (Sentinel, master mymaster)"
    assert parse("rediss+sentinel://s1/primary").tls
    assert parse("redis+sentinel://s1/primary").database == 0


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (f"admin:{PASSWORD}@cache.internal:6379", "has no scheme (cache.internal:6379)"),
        ("cache.internal:6379", "has no scheme"),
        ("http://cache.internal", "scheme http://"),
        (f"redis+sentinel://:{PASSWORD}@s1:26379", "needs the master's name"),
        (f"redis://:{PASSWORD}@cache.internal:port", "port 'port' of cache.internal"),
        ("redis://cache.internal/zero", "database 'zero'"),
        ("redis://a:1,b:2", "several hosts"),
        ("redis://", "names no host"),
        ("unix://", "socket's path"),
    ],
)
def test_unusable_urls_say_why_without_the_password(url: str, says: str) -> None:
    with pytest.raises(RedisUrlError) as raised:
        parse(url)
    message = str(raised.value)
    assert says in message and "\n" not in message
    assert PASSWORD not in message


def test_repr_keeps_the_password_out() -> None:
    assert PASSWORD not in repr(parse(f"redis+sentinel://:{PASSWORD}@s1/m"))


async def test_web_client_asks_the_sentinels_for_the_master() -> None:
    redis = connect(f"redis+sentinel://:{PASSWORD}@127.0.0.1:26379,127.0.0.2:26379/mymaster/1")
    pool = redis.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "mymaster"
    assert [s.connection_pool.connection_kwargs["host"] for s in pool.sentinel_manager.sentinels] == [
        "127.0.0.1",
        "127.0.0.2",
    ]
    assert pool.connection_kwargs["db"] == 1 and pool.connection_kwargs["password"] == PASSWORD
    # the sentinels fail as fast as the master does
    assert pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs["socket_connect_timeout"] == 1.0
    await redis.aclose()


async def test_web_client_for_a_plain_url_is_unchanged() -> None:
    redis = connect("redis://127.0.0.1:6390/5")
    assert redis.connection_pool.connection_kwargs["port"] == 6390
    assert not isinstance(redis.connection_pool, SentinelConnectionPool)
    await redis.aclose()


def test_worker_settings_for_sentinel_and_plain_urls() -> None:
    sentinel = redis_settings(f"redis+sentinel://:{PASSWORD}@s1:26379,s2:26380/mymaster/2")
    assert sentinel.sentinel and sentinel.sentinel_master == "mymaster"
    assert sentinel.host == [("s1", 26379), ("s2", 26380)]
    assert sentinel.database == 2 and sentinel.password == PASSWORD
    plain = redis_settings("rediss://:pw@cache:6380/3")
    assert not plain.sentinel and (plain.host, plain.port, plain.database, plain.ssl) == ("cache", 6380, 3, True)
