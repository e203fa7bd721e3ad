"""python -m tests.soak [--connections N] [--seeds 1,2,3] [--fault-rate 0.2] [--no-kill] [--no-redis-restart]

Exit status 0 only if every seed's run is clean: nothing lost, doubled, missed, unexpected or
mismatched, no dead letter, every log line JSON and free of secrets, no process crashed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tests.soak.report import details, table
from tests.soak.runner import SoakConfig, SoakResult, run_soak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--seed", type=int, default=None, help="one seed (same as --seeds N)")
    parser.add_argument("--seeds", default="1", help="comma list: one run per seed")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--fault-rate", type=float, default=0.2, help="fraction of Codat API calls that fail")
    parser.add_argument("--no-kill", action="store_true", help="no worker SIGKILL")
    parser.add_argument("--no-redis-restart", action="store_true", help="no Valkey stop and start")
    parser.add_argument("--redis-down", type=float, default=5.0, help="seconds Valkey stays down")
    parser.add_argument("--concurrency", type=int, default=8, help="deliveries in flight")
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    parser.add_argument(
        "--fetch-on-first-link", type=float, default=0.5, help="fraction of first links Codat pulls for itself"
    )
    parser.add_argument("--initial-sync", choices=("auto", "request"), default="auto", help="CODAT_INITIAL_SYNC")
    parser.add_argument("--work-dir", type=Path, default=None, help="logs and data (a temporary directory)")
    args = parser.parse_args(argv)
    seeds = [args.seed] if args.seed is not None else [int(s) for s in args.seeds.split(",") if s.strip()]
    results: list[SoakResult] = []
    for seed in seeds:
        work_dir = args.work_dir / f"seed-{seed}" if args.work_dir else None
        config = SoakConfig(
            connections=args.connections,
            seed=seed,
            workers=args.workers,
            fault_rate=args.fault_rate,
            kill_worker=not args.no_kill,
            restart_redis=not args.no_redis_restart,
            redis_down_seconds=args.redis_down,
            concurrency=args.concurrency,
            drain_timeout=args.drain_timeout,
            work_dir=work_dir,
            fetch_on_first_link=args.fetch_on_first_link,
            initial_sync=args.initial_sync,
        )
        result = run_soak(config)
        print(details(result), flush=True)
        results.append(result)
    print()
    print(table(results))
    return 0 if all(r.clean for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
