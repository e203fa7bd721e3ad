"""Where an event's Redis commands go: one worker drains a backlog (the drain benchmark's: 20%
first links, 80% read.completed) against the sandbox Codat answering at once, Redis on loopback,
and the whole `INFO commandstats` delta is printed per event, most first. The profile in
bench/README.md was taken with it.

    python -m bench.profile [--backlog 5000] [--workers 1] [--rounds 1] [--cprofile FILE]

With --cprofile, the (last) worker runs under cProfile and its top functions by own time are
printed (the worker's CPU per event is slower so: read the shares, not the figures).
"""

from __future__ import annotations

import argparse
import os
import pstats
import sys
import tempfile
from pathlib import Path

from bench import drain, redisstats
from bench.stack import Stack
from sandbox.devmode import signing_secret


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backlog", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--kind", default="service", choices=("service", "floor"))
    parser.add_argument("--cprofile", type=Path, help="run the worker under cProfile, its stats written here")
    args = parser.parse_args()
    if args.cprofile:
        os.environ["BENCH_WORKER_CPROFILE"] = str(args.cprofile.resolve())
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        stack = Stack(scratch, 1.0, signing_secret(scratch))
        try:
            for number in range(args.rounds):
                result = drain.run(stack, args.kind, args.workers, "loopback", args.backlog, 60)
                assert drain.last_delta is not None
                delta, done = drain.last_delta
                print(f"\nround {number + 1}: {args.kind}, {args.workers} worker(s), {done:,} events")
                print({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items() if k != "top"})
                print("\n".join(redisstats.commandstats_table(delta, done)))
        finally:
            stack.stop()
    if args.cprofile:
        stats = pstats.Stats(str(args.cprofile))
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(40)
    return 0


if __name__ == "__main__":
    sys.exit(main())
