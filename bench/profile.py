"""Where an event's Redis commands go: one worker drains a backlog (the drain benchmark's: 20%
first links, 80% read.completed) against the sandbox Codat answering at once, Redis on loopback,
and the whole `INFO commandstats` delta is printed per event, most first. The profile in
bench/README.md was taken with it.

    python -m bench.profile [--backlog 5000] [--workers 1] [--rounds 1] [--cprofile FILE] [--by-script]

With --cprofile, the (last) worker runs under cProfile and its top functions by own time are
printed (the worker's CPU per event is slower so: read the shares, not the figures). With
--by-script, the server logs every command to its slow log (`slowlog-log-slower-than 0`) and the
time inside each is summed by command, each script by its name (logging costs the server too:
read the shares).
"""

from __future__ import annotations

import argparse
import os
import pstats
import sys
import tempfile
from pathlib import Path
from typing import Any

import redis

from bench import drain, redisstats
from bench.stack import Stack
from sandbox.devmode import signing_secret
from service.stores import scripts


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backlog", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--kind", default="service", choices=("service", "floor"))
    parser.add_argument("--cprofile", type=Path, help="run the worker under cProfile, its stats written here")
    parser.add_argument("--by-script", action="store_true", help="the server's time per command and script")
    args = parser.parse_args()
    if args.cprofile:
        os.environ["BENCH_WORKER_CPROFILE"] = str(args.cprofile.resolve())
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        stack = Stack(scratch, 1.0, signing_secret(scratch))
        try:
            for number in range(args.rounds):
                staged = (lambda: log_everything(stack.store)) if args.by_script else None
                result = drain.run(stack, args.kind, args.workers, "loopback", args.backlog, 60, staged)
                assert drain.last_delta is not None
                delta, done = drain.last_delta
                print(f"\nround {number + 1}: {args.kind}, {args.workers} worker(s), {done:,} events")
                print({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items() if k != "top"})
                print("\n".join(redisstats.commandstats_table(delta, done)))
                if args.by_script:
                    print("\n".join(by_script(stack.store.slowlog_get(1_000_000), done)))
        finally:
            stack.stop()
    if args.cprofile:
        stats = pstats.Stats(str(args.cprofile))
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(40)
    return 0


def log_everything(store: redis.Redis) -> None:
    """From now on every command goes to the slow log, with how long it took inside the server."""
    store.config_set("slowlog-max-len", 1_000_000)
    store.config_set("slowlog-log-slower-than", 0)
    store.slowlog_reset()


def by_script(entries: list[dict[str, Any]], events: int) -> list[str]:
    """The slow log's durations summed by command, an EVALSHA by its script's name. The bench's
    own polls (ZCARD), its ZUNIONSTORE and INFO calls are in it too."""
    names = {scripts.Script(None, path.stem).sha: path.stem for path in scripts.LUA.glob("*.lua")}
    spent: dict[str, list[int]] = {}
    for entry in entries:
        command = [scripts.text(part) for part in entry["command"].split()[:2]]
        name = command[0].upper()
        if name == "EVALSHA" and len(command) > 1:
            name = f"EVALSHA {names.get(command[1], command[1][:8])}"
        calls_and_time = spent.setdefault(name, [0, 0])
        calls_and_time[0] += 1
        calls_and_time[1] += entry["duration"]
    lines = ["| command or script | calls/event | us/event | us/call |", "|---|---:|---:|---:|"]
    for name, (calls, usec) in sorted(spent.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"| {name} | {calls / events:.2f} | {usec / events:.1f} | {usec / calls:.1f} |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
