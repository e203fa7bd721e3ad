"""The stores' Lua scripts, each in its own file in service/stores/lua/, called by name.

A script names its inputs at the top, one per line, in order, and this module reads that header
to call it with names instead of positions:

    local connection = KEYS[1]   -- what it is
    local owner = ARGV[1]

    Script(redis, "connection_claim")(connection=key, owner=owner)

A name given alone (`local marks = ARGV`) takes the whole list, as a Python list: a script with
a variable number of arguments declares only that. A call that leaves out a declared name, or
gives one the script does not declare, raises TypeError before anything is sent.

Fragments several scripts share (the outbox's `emit`) are files of their own, pulled in by a line
`-- include: <name>` (the file's text replaces the line; one level deep). Nothing else is done
to a script's text: no substitution, so what Redis runs is what the file says.

A script runs by EVALSHA: its text crosses the network and is hashed by Redis once, not on
every call (the intake's batch and the workers' claim run thousands of times a second). A Redis
that lost its script cache (a restart, a replica promoted by a failover) answers NOSCRIPT: the
script is loaded and the call made again, which is safe because a NOSCRIPT call ran nothing.
Staged in a pipeline (`Script.stage`) it goes as EVALSHA too, and the one who runs the pipeline
(service.stores.replication.execute) sends again, after loading, only the calls that met
NOSCRIPT (`lost_scripts`, `load`).

Replies have one decoding policy, whatever client called (the web's speaks bytes; a test's may
speak str): `decoded` turns every bytes in a reply into str, and `text` is the same for one
value read by a plain command (HGETALL fields, SMEMBERS, ...). Every store uses these two.
"""

from __future__ import annotations

import functools
import hashlib
import re
import weakref
from pathlib import Path
from typing import Any, NamedTuple

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

LUA = Path(__file__).resolve().parent / "lua"
_DECLARATION = re.compile(r"^local\s+(\w+)\s*=\s*(KEYS|ARGV)(?:\[(\d+)\])?\s*(?:--.*)?$")
_INCLUDE = re.compile(r"^--\s*include:\s*(\w+)\s*$")
# Every script's text by its SHA1, for loading again what a pipeline's EVALSHA did not find.
_BY_SHA: dict[str, str] = {}


def text(value: Any) -> str:
    """A value Redis answered, as str (bytes are UTF-8)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def decoded(reply: Any) -> Any:
    """A script's reply with every bytes in it as str (lists decoded item by item). Integers
    stay integers; a Lua false stays None."""
    if isinstance(reply, bytes):
        return reply.decode()
    if isinstance(reply, list):
        return [decoded(item) for item in reply]
    return reply


class Signature(NamedTuple):
    keys: tuple[str, ...]  # KEYS[1], KEYS[2], ... by name
    args: tuple[str, ...]
    all_keys: str | None  # the name that takes the whole of KEYS, if the script declares one
    all_args: str | None


@functools.cache
def source(name: str) -> str:
    """The script's text with its includes in place."""
    lines = []
    for line in (LUA / f"{name}.lua").read_text().splitlines():
        found = _INCLUDE.match(line.strip())
        lines.append((LUA / f"{found.group(1)}.lua").read_text().rstrip("\n") if found else line)
    return "\n".join(lines) + "\n"


@functools.cache
def signature(name: str) -> Signature:
    """The names the script declares for its KEYS and ARGV, in order (ValueError if they skip a
    position, repeat one, or mix a whole-list name with positions)."""
    declared: dict[str, dict[int, str]] = {"KEYS": {}, "ARGV": {}}
    whole: dict[str, str | None] = {"KEYS": None, "ARGV": None}
    for line in source(name).splitlines():
        found = _DECLARATION.match(line.strip())
        if not found:
            continue
        local, kind, position = found.groups()
        if position is None:
            whole[kind] = local
        elif int(position) in declared[kind]:
            raise ValueError(f"{name}.lua: {kind}[{position}] declared twice")
        else:
            declared[kind][int(position)] = local
    ordered = {}
    for kind, names in declared.items():
        if sorted(names) != list(range(1, len(names) + 1)):
            raise ValueError(f"{name}.lua: {kind} declared at {sorted(names)}, not 1..{len(names)}")
        if names and whole[kind]:
            raise ValueError(f"{name}.lua: {kind} both as a whole ({whole[kind]}) and by position")
        ordered[kind] = tuple(names[i] for i in sorted(names))
    return Signature(ordered["KEYS"], ordered["ARGV"], whole["KEYS"], whole["ARGV"])


class Script:
    """One script of service/stores/lua, called with named inputs on `redis` (or, with `run`, on
    another client: the workers' queue scripts serve whichever client the caller holds)."""

    def __init__(self, redis: Redis | None, name: str) -> None:
        self.name = name
        self.source = source(name)
        self.signature = signature(name)
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()
        _BY_SHA[self.sha] = self.source
        self._redis = redis
        sig = self.signature
        self._wanted = {*sig.keys, *sig.args, *(n for n in (sig.all_keys, sig.all_args) if n)}

    def positions(self, named: dict[str, Any]) -> tuple[list[Any], list[Any]]:
        """KEYS and ARGV in the script's declared order."""
        sig = self.signature
        if named.keys() != self._wanted:
            if missing := self._wanted - named.keys():
                raise TypeError(f"{self.name}.lua: missing {sorted(missing)}")
            raise TypeError(f"{self.name}.lua: does not declare {sorted(named.keys() - self._wanted)}")
        keys = list(named[sig.all_keys]) if sig.all_keys else [named[k] for k in sig.keys]
        args = list(named[sig.all_args]) if sig.all_args else [named[a] for a in sig.args]
        return keys, args

    async def __call__(self, **named: Any) -> Any:
        if self._redis is None:
            raise TypeError(f"{self.name}.lua: made without a client, call it with run(redis, ...)")
        return await self.run(self._redis, **named)

    async def run(self, redis: Redis, **named: Any) -> Any:
        return decoded(await self.raw(redis, **named))

    async def raw(self, redis: Redis, **named: Any) -> Any:
        """The reply as Redis gave it (bytes stay bytes: the job queue's claim returns jobs,
        which are not text)."""
        keys, args = self.positions(named)
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)  # type: ignore[misc]
        except NoScriptError:
            await redis.script_load(self.source)
            return await redis.evalsha(self.sha, len(keys), *keys, *args)  # type: ignore[misc]

    def stage(self, pipe: Pipeline, **named: Any) -> None:
        """Queue the call in `pipe` (as EVALSHA); its reply comes back, undecoded, with the
        pipeline's. Run the pipeline with service.stores.replication.execute, which loads the
        script again if Redis lost it."""
        keys, args = self.positions(named)
        pipe.evalsha(self.sha, len(keys), *keys, *args)


def lost_scripts(results: list[Any]) -> list[int]:
    """The positions, in a pipeline's answers (raise_on_error=False), of calls that met NOSCRIPT."""
    return [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]


def _shas(commands: list[tuple[Any, ...]]) -> set[str]:
    return {text(command[1]) for command in commands if text(command[0]).upper() == "EVALSHA"}


async def load(redis: Redis, commands: list[tuple[Any, ...]], *, again: bool = False) -> None:
    """SCRIPT LOAD the scripts these staged commands call by EVALSHA (ours, by their SHA1), unless
    this process loaded them on this client's server already; `again`: whatever it did (the
    server answered NOSCRIPT: it restarted, or a replica took over). Loading before the pipeline
    is sent, rather than after it met NOSCRIPT, keeps the write and its WAIT in one round trip."""
    loaded = _LOADED.setdefault(redis.connection_pool, set())
    for sha in _shas(commands):
        if again or sha not in loaded:
            await redis.script_load(_BY_SHA[sha])
            loaded.add(sha)


# The scripts each client's server holds, as far as this process knows (service.stores.replication
# loads a staged script before its first pipeline). Keyed by pool: one per client.
_LOADED: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
