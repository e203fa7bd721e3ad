"""REDIS_URL, read once for the web process (service.stores.client), the workers
(workers.redis_settings) and the command-line tool alike.

Accepted forms:

- `redis://[[user]:password@]host[:port][/db]`, `rediss://...` (TLS), `unix:///path/to/socket`
- `redis+sentinel://[[user]:password@]host:port[,host:port...]/master[/db]` (and `rediss+sentinel://`):
  the sentinels to ask, then the name of the monitored master. The password is the master's;
  sentinels are asked without one, as redis-py and arq do by default.

Every message here names where Redis was looked for, never the password: it is printed on a
refusal to start, and a process manager keeps that line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

PLAIN_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379


class RedisUrlError(ValueError):
    """REDIS_URL cannot be used; the message is one line without the password."""


@dataclass(frozen=True)
class RedisTarget:
    url: str = field(repr=False)  # as given, password included: for the client, never for a message
    hosts: tuple[tuple[str, int], ...]
    database: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    sentinel_master: str | None = None
    unix_path: str | None = None

    @property
    def sentinel(self) -> bool:
        return self.sentinel_master is not None

    def where(self) -> str:
        """host:port (or the sentinels and master, or the socket), fit for a message."""
        if self.unix_path:
            return self.unix_path
        hosts = ",".join(f"{host}:{port}" for host, port in self.hosts)
        if self.sentinel_master:
            return f"{hosts} (Sentinel, master {self.sentinel_master})"
        return hosts


def parse(url: str) -> RedisTarget:
    url = url.strip()
    if "://" not in url:
        # e.g. `localhost:6379`, or `user:password@host:6379`: say what to write, and show the
        # host part only.
        raise RedisUrlError(
            f"REDIS_URL has no scheme ({_without_credentials(url)}): write redis://HOST:PORT/DB, "
            "rediss:// for TLS, or redis+sentinel://HOST:PORT,.../MASTER"
        )
    scheme = url.split("://", 1)[0].lower()
    if scheme not in PLAIN_SCHEMES + SENTINEL_SCHEMES:
        raise RedisUrlError(
            f"REDIS_URL scheme {scheme}:// is not one of redis://, rediss://, unix://, redis+sentinel://, "
            "rediss+sentinel://"
        )
    parts = urlsplit(url)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, password = _credentials(userinfo)
    if scheme == "unix":
        if not parts.path:
            raise RedisUrlError("REDIS_URL unix:// needs the socket's path, e.g. unix:///run/redis.sock")
        return RedisTarget(url, (), _db(parts.query, ""), username, password, unix_path=parts.path)
    sentinel = scheme in SENTINEL_SCHEMES
    default_port = DEFAULT_SENTINEL_PORT if sentinel else DEFAULT_PORT
    hosts = tuple(_host_port(item, default_port) for item in hostlist.split(",") if item.strip())
    if not hosts:
        raise RedisUrlError(f"REDIS_URL names no host: write {scheme}://HOST:PORT")
    if not sentinel:
        if len(hosts) > 1:
            raise RedisUrlError(
                "REDIS_URL names several hosts: for Sentinel write redis+sentinel://HOST:PORT,.../MASTER"
            )
        return RedisTarget(
            url, hosts, _db(parts.query, parts.path.strip("/")), username, password, tls=scheme == "rediss"
        )
    master, _, db = parts.path.strip("/").partition("/")
    if not master:
        raise RedisUrlError(
            "REDIS_URL redis+sentinel:// needs the master's name after the sentinels, "
            "e.g. redis+sentinel://HOST:26379,HOST2:26379/mymaster/0"
        )
    return RedisTarget(
        url,
        hosts,
        _db(parts.query, db),
        username,
        password,
        tls=scheme == "rediss+sentinel",
        sentinel_master=unquote(master),
    )


def _without_credentials(text: str) -> str:
    return text.rpartition("@")[2] or "empty"


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, colon, password = userinfo.partition(":")
    return (unquote(user) or None), (unquote(password) if colon else None)


def _host_port(item: str, default_port: int) -> tuple[str, int]:
    item = item.strip()
    if item.startswith("["):  # [::1]:6379
        host, _, rest = item[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
    if not host:
        raise RedisUrlError(f"REDIS_URL host {item!r} has no name")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise RedisUrlError(f"REDIS_URL port {port_text!r} of {host} is not a port number")
    return host, int(port_text)


def _db(query: str, path: str) -> int:
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key == "db" and value:
            path = value
    if not path:
        return 0
    if not path.isdigit():
        raise RedisUrlError(f"REDIS_URL database {path!r} is not a number (e.g. /0)")
    return int(path)
