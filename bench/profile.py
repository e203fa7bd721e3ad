"""Where an event's Redis commands go: one worker drains a backlog (the drain benchmark's: 20%
first links, 80% read.completed) against the sandbox Codat answering at once, Redis on loopback,
and the whole `INFO commandstats` delta is printed per event, most first. The profile in
bench/README.md was taken with it.

    python -m bench.profile [--backlog 5000] [--workers 1] [--rounds 1] [--cprofile FILE] [--by-script]
                            [--perf FILE]

With --cprofile, the (last) worker runs under cProfile and its top functions by own time are
printed (the worker's CPU per event is slower so: read the shares, not the figures). With
--by-script, the server logs every command to its slow log (`slowlog-log-slower-than 0`) and the
time inside each is summed by command, each script by its name (logging costs the server too:
read the shares). With --perf, Linux perf samples the server process itself while the
workers drain (call graphs from DWARF: the build keeps its symbols), and the share of its CPU
under each of a few of its functions is printed: the scripts, the commands they call, the
append-only file, the sockets, the allocator (bench/README.md, "Fourth pass").
"""

from __future__ import annotations

import argparse
import os
import pstats
import signal
import subprocess
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
    parser.add_argument("--perf", type=Path, help="sample the server with Linux perf, its data written here")
    args = parser.parse_args()
    if args.cprofile:
        os.environ["BENCH_WORKER_CPROFILE"] = str(args.cprofile.resolve())
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        stack = Stack(scratch, 1.0, signing_secret(scratch))
        recording: list[subprocess.Popen[bytes]] = []

        def staged() -> None:  # the backlog is written: what the workers do from now on is measured
            if args.by_script:
                log_everything(stack.store)
            if args.perf:
                recording.append(perf_record(stack.store, args.perf))

        try:
            for number in range(args.rounds):
                try:
                    result = drain.run(stack, args.kind, args.workers, "loopback", args.backlog, 60, staged)
                finally:
                    while recording:
                        perf_stop(recording.pop(), args.perf)
                assert drain.last_delta is not None
                delta, done = drain.last_delta
                print(f"\nround {number + 1}: {args.kind}, {args.workers} worker(s), {done:,} events")
                print({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items() if k != "top"})
                print("\n".join(redisstats.commandstats_table(delta, done)))
                if args.by_script:
                    print("\n".join(by_script(stack.store.slowlog_get(1_000_000), done)))
                if args.perf:
                    print("\n".join(perf_shares(args.perf)))
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


def perf_record(store: redis.Redis, path: Path) -> subprocess.Popen[bytes]:
    pid = store.info("server")["process_id"]
    command = ["perf", "record", "-F", "999", "--call-graph", "dwarf,16384", "-p", str(pid), "-o", str(path)]
    with path.with_suffix(".log").open("wb") as said:  # what perf says, for perf_stop to show
        return subprocess.Popen(command, stdout=said, stderr=subprocess.STDOUT)


def perf_stop(perf: subprocess.Popen[bytes], path: Path) -> None:
    """Stop the recording (perf writes its data on SIGINT: DWARF stacks take a while), and say
    why when it did not record (no permission to attach, e.g. kernel.perf_event_paranoid)."""
    perf.send_signal(signal.SIGINT)
    try:
        perf.wait(300)
    except subprocess.TimeoutExpired:
        perf.kill()
        perf.wait()
    if perf.returncode not in (0, -signal.SIGINT):  # it writes its data, then ends by the signal
        said = path.with_suffix(".log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"perf record ended with {perf.returncode}: {said}")


# The server's functions whose share (with what they call) is printed, and what each stands for.
PERF_UNDER = {
    "luaCallFunction": "inside scripts (all of it)",
    "VM_CallArgv": "of which the commands they call (Valkey 9 runs Lua as a module: each call goes through its API)",
    "feedAppendOnlyFile": "writing each change into the append-only file's buffer",
    "readQueryFromClient": "reading and running what clients sent",
    "_writeToClient": "writing answers to clients",
    "do_syscall_64": "in the kernel (sockets, the append-only file, epoll)",
}
# glibc's allocator (the embedded build's: INFO memory, mem_allocator), by its own time.
ALLOCATOR = (
    "_int_malloc",
    "_int_free",
    "malloc",
    "malloc_consolidate",
    "unlink_chunk.constprop.0",
    "cfree",
    "__malloc_usable_size",
    "_int_realloc",
    "realloc",
    "free",
)


def perf_shares(path: Path) -> list[str]:
    """The share of the server's sampled CPU under each of PERF_UNDER, and in the allocator."""

    def report(*how: str) -> dict[str, float]:
        command = ["perf", "report", "-i", str(path), "--stdio", "--sort", "symbol", "-g", "none", *how]
        text = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        shares: dict[str, float] = {}
        for line in text.splitlines():  # "12.3% [4.5%] [.] name ...": the first share, with what it calls
            fields = line.split()
            kind = next((i for i, field in enumerate(fields[:3]) if field in ("[.]", "[k]")), None)
            if kind is not None and kind + 1 < len(fields) and fields[0].endswith("%"):
                shares[fields[kind + 1]] = float(fields[0].rstrip("%"))
        return shares

    under, own = report("--children"), report("--no-children")
    lines = ["| the server's CPU | share |", "|---|---:|"]
    lines += [f"| {what} (`{name}`) | {under.get(name, 0.0):.1f}% |" for name, what in PERF_UNDER.items()]
    lines.append(f"| glibc's allocator, its own time | {sum(own.get(name, 0.0) for name in ALLOCATOR):.1f}% |")
    return lines


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
