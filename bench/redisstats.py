"""What an event costs the Redis primary, read from the server itself (no estimates):

- commands: the delta of `INFO commandstats` calls, summed over every command. Commands a script
  runs (`redis.call`) count one each, as does the EVAL around them; MULTI and EXEC count one each.
- round trips: the delta of `INFO stats` `total_reads_processed`: one per read event on a client
  socket, so a pipeline or a script call sent in one write is one, and a reply waited for before
  the next write makes the next one. (A write larger than the socket buffer could be read in two,
  and two clients' writes are never read in one: for requests of a few KB it is the count of
  round trips. Checked: a pipeline of ten SETs is one read.)
- Valkey CPU: the delta of `INFO cpu` used_cpu_sys + used_cpu_user (the whole server process, its
  background threads included: AOF writes are part of what an event costs).
- memory: the delta of `INFO memory` used_memory.

The bench's own commands in the window (its INFO calls, its polls of the queue) are taken off
by name and count (`own`), so that the figures are what the service's processes cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis

TOP = 6  # commands named in the breakdown


@dataclass
class Snapshot:
    calls: dict[str, int]
    reads: int
    cpu: float
    memory: int
    usec: dict[str, int] = field(default_factory=dict)  # time inside each command (commandstats)


@dataclass
class Delta:
    calls: dict[str, int] = field(default_factory=dict)
    reads: int = 0
    cpu: float = 0.0
    memory: int = 0
    usec: dict[str, int] = field(default_factory=dict)

    def per_event(self, events: int) -> dict[str, Any]:
        """The figures the tables print, per event."""
        events = max(1, events)
        total = sum(self.calls.values())
        top = sorted(self.calls.items(), key=lambda kv: -kv[1])[:TOP]
        return {
            "redis_cmds": total / events,
            "redis_rtts": self.reads / events,
            "valkey_cpu_us": self.cpu / events * 1e6,
            "top": ", ".join(f"{name} {count / events:.2f}" for name, count in top if count),
        }


def snapshot(store: redis.Redis) -> Snapshot:
    info = store.info("all")
    calls = {key[len("cmdstat_") :]: value["calls"] for key, value in info.items() if key.startswith("cmdstat_")}
    usec = {key[len("cmdstat_") :]: value["usec"] for key, value in info.items() if key.startswith("cmdstat_")}
    return Snapshot(
        calls=calls,
        reads=int(info["total_reads_processed"]),
        cpu=float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
        memory=int(info["used_memory"]),
        usec=usec,
    )


def delta(before: Snapshot, after: Snapshot, own: dict[str, int] | None = None) -> Delta:
    """after - before, less the bench's own commands (`own`: name -> calls, each one read). The
    INFO that took `after` is the bench's too."""
    own = {"info": 1, **(own or {})}
    calls = {}
    for name, count in after.calls.items():
        count -= before.calls.get(name, 0) + own.get(name, 0)
        if count > 0:
            calls[name] = count
    return Delta(
        calls=calls,
        reads=after.reads - before.reads - sum(own.values()),
        cpu=after.cpu - before.cpu,
        memory=after.memory - before.memory,
        usec={name: after.usec.get(name, 0) - before.usec.get(name, 0) for name in calls},
    )


def commandstats_table(d: Delta, events: int) -> list[str]:
    """Every command of a delta, per event, most first: the profile (bench/README.md). `us in
    command` is commandstats' own time inside the command (a script's includes the commands it
    runs, which count again on their own lines); what the server's CPU spends outside every
    command (reading, parsing, answering: per round trip) is the last line."""
    total = sum(d.calls.values())
    lines = ["| command | per event | share | us in command/event |", "|---|---:|---:|---:|"]
    for name, count in sorted(d.calls.items(), key=lambda kv: -kv[1]):
        usec = d.usec.get(name, 0) / events
        lines.append(f"| {name} | {count / events:.2f} | {count / max(1, total):.0%} | {usec:.1f} |")
    lines.append(f"| **all** | **{total / events:.2f}** | | |")
    outside = d.cpu * 1e6 / events - sum(v for k, v in d.usec.items() if not k.startswith("eval")) / events
    lines.append(f"| CPU outside any command (us/event) | | | {outside:.1f} |")
    return lines
