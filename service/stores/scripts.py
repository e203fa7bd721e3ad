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

A script runs by EVALSHA, loaded again if Redis lost its cache (redis-py's Script); staged in a
pipeline (`Script.stage`) it goes as EVAL, so the pipeline needs no SCRIPT LOAD round trip of its
own and survives a Redis that restarted with an empty cache.

Replies have one decoding policy, whatever client called (the web's speaks bytes; a test's may
speak str): `decoded` turns every bytes in a reply into str, and `text` is the same for one
value read by a plain command (HGETALL fields, SMEMBERS, ...). Every store uses these two.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, NamedTuple

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

LUA = Path(__file__).resolve().parent / "lua"
_DECLARATION = re.compile(r"^local\s+(\w+)\s*=\s*(KEYS|ARGV)(?:\[(\d+)\])?\s*(?:--.*)?$")
_INCLUDE = re.compile(r"^--\s*include:\s*(\w+)\s*$")


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
    """One script of service/stores/lua, registered on `redis` and called with named inputs."""

    def __init__(self, redis: Redis, name: str) -> None:
        self.name = name
        self.source = source(name)
        self.signature = signature(name)
        self._script = redis.register_script(self.source)
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
        keys, args = self.positions(named)
        return decoded(await self._script(keys=keys, args=args))

    def stage(self, pipe: Pipeline, **named: Any) -> None:
        """Queue the call in `pipe` (as EVAL); its reply comes back, undecoded, with the pipeline's."""
        keys, args = self.positions(named)
        pipe.eval(self.source, len(keys), *keys, *args)
