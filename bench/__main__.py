"""`make bench`: every benchmark in one run, each figure beside its baseline.

    python -m bench                        # all parts
    python -m bench --parts drain,codat    # some: ingest, ack, drain, codat, replicated
    python -m bench --save-baseline        # write this run's figures as bench/baseline.json

- ingest: ceiling / naive / service, closed loop (bench/ingest.py)
- ack: open-loop ack latency at fixed rates, one web process, Redis on loopback (bench/latency.py)
- drain: 1 and 2 workers empty a backlog, service and floor, Redis on loopback and ~2 ms away
  through a delay proxy (bench/drain.py, bench/proxy.py)
- codat: webhook -> Codat call latency at a fixed rate, one web, one worker (bench/latency.py)
- replicated: ack latency at 4,000/s with REDIS_MIN_REPLICAS=1 and one replica on loopback, beside
  0, one web each on the same primary (bench/replicated.py)

What each event costs the Redis primary is read from the server (bench/redisstats.py): commands
per event (INFO commandstats, with the commands that take most), round trips per event (INFO
stats total_reads_processed), Valkey CPU per event (INFO cpu), bytes per queued event (INFO
memory). bench/README.md has the profile and how to read it.

Every measurement is made `--rounds` times, alternating the variants, and the table gives the
median with the spread (min-max) beside it: this machine is shared, figures move.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import uvloop

from bench import drain, ingest, latency, replicated
from bench.stack import Stack
from sandbox.devmode import signing_secret

BASELINE = Path(__file__).with_name("baseline.json")
PARTS = ("ingest", "ack", "drain", "codat", "replicated")
# Redis cost columns, in every table that has them (bench/redisstats.py)
SERVER_COLUMNS = [
    ("redis_cmds", "Redis cmds/event", ".1f"),
    ("redis_rtts", "Redis round trips/event", ".2f"),
    ("valkey_cpu_us", "Valkey CPU us/event", ".0f"),
]


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in runs[0]:
        values = [r[key] for r in runs]
        if isinstance(values[0], bool):
            out[key] = all(values)
        elif isinstance(values[0], int | float):
            out[key] = statistics.median(values)
            out[key + "_spread"] = [min(values), max(values)]
        elif isinstance(values[0], str):
            out[key] = values[-1]
    return out


def tops(rows: dict[str, dict[str, Any]]) -> None:
    """The commands that take most, per event, per row (last round)."""
    for name, row in rows.items():
        if row.get("top"):
            print(f"  {name}: {row['top']}")


def cell(value: float | None, base: float | None, fmt: str) -> str:
    text = "-" if value is None else format(value, fmt)
    if base is not None:
        text += f" ({format(base, fmt)})"
    return text


def table(title: str, rows: dict[str, dict[str, Any]], base: dict[str, dict[str, Any]], columns: list) -> None:
    print(f"\n{title}  [now (baseline)]\n")
    print("| " + " | ".join(["", *[c[1] for c in columns]]) + " |")
    print("|---|" + "---:|" * len(columns))
    for name, row in rows.items():
        old = base.get(name, {})
        cells = [cell(row.get(key), old.get(key), fmt) for key, _, fmt in columns]
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS), help="comma list of: " + ", ".join(PARTS))
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each measurement (median reported)")
    parser.add_argument("--ingest-rounds", type=int, default=4)
    parser.add_argument("--rates", default="1000,2000,4000", help="ack: deliveries/s offered")
    parser.add_argument("--seconds", type=float, default=3.0, help="ack and codat: seconds of load per rate")
    parser.add_argument("--backlog", type=int, default=5000, help="drain: events in the backlog")
    parser.add_argument("--max-drain-seconds", type=float, default=20.0, help="drain: rate taken over this at most")
    parser.add_argument("--codat-rate", type=int, default=200)
    parser.add_argument("--delay-ms", type=float, default=1.0, help="proxy delay, each direction")
    parser.add_argument("--replicated-rate", type=int, default=4000, help="replicated: deliveries/s offered")
    parser.add_argument("--save-baseline", action="store_true")
    args = parser.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    uvloop.install()
    results: dict[str, dict[str, dict[str, Any]]] = {}

    if "ingest" in parts:
        results["ingest"] = ingest.measure(args.ingest_rounds, 3000, 32)

    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        stack = Stack(scratch, args.delay_ms, signing_secret(scratch))
        rtt = stack.rtt_ms
        try:
            runs: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
            for number in range(args.rounds):
                if "ack" in parts:
                    for rate in (int(r) for r in args.rates.split(",")):
                        runs["ack"][f"{rate}/s"].append(latency.ack(stack, rate, args.seconds))
                        print(f"round {number + 1} ack {rate}/s: {runs['ack'][f'{rate}/s'][-1]}", file=sys.stderr)
                if "drain" in parts:
                    for network in ("loopback", "proxy"):
                        for kind in ("service", "floor"):
                            for count in (1, 2):
                                name = f"{kind}, {count} worker{'s' if count > 1 else ''}, {network}"
                                result = drain.run(stack, kind, count, network, args.backlog, args.max_drain_seconds)
                                runs["drain"][name].append(result)
                                print(f"round {number + 1} drain {name}: {result}", file=sys.stderr)
                if "codat" in parts:
                    for network in ("loopback", "proxy"):
                        name = f"{args.codat_rate}/s, {network}"
                        result = latency.codat(stack, network, args.codat_rate, args.seconds)
                        runs["codat"][name].append(result)
                        print(f"round {number + 1} codat {name}: {result}", file=sys.stderr)
        finally:
            stack.stop()
    if "replicated" in parts:
        for name, samples in replicated.measure(args.replicated_rate, args.seconds, args.rounds).items():
            runs["replicated"][name] = samples
    for part, by_name in runs.items():
        results[part] = {name: median_of(samples) for name, samples in by_name.items()}
    for one, two in (("service, 1 worker", "service, 2 workers"), ("floor, 1 worker", "floor, 2 workers")):
        for network in ("loopback", "proxy"):
            rows = results.get("drain", {})
            single, double = rows.get(f"{one}, {network}"), rows.get(f"{two}, {network}")
            if single and double:
                double["vs_one"] = double["rate"] / single["rate"]

    baseline = orjson.loads(BASELINE.read_bytes()) if BASELINE.exists() else {}
    base = baseline.get("results", {})
    print(
        f"\n{os.cpu_count()} cores; Redis round trip: loopback {rtt['loopback']:.3f} ms, proxy {rtt['proxy']:.2f} ms; "
        f"median of {args.rounds} rounds; baseline: {baseline.get('note', 'none')}"
    )
    if "ingest" in results:
        table(
            "ingest (closed loop, 32 connections, 3,000 deliveries a round)",
            results["ingest"],
            base.get("ingest", {}),
            [
                ("rps", "requests/s", ",.0f"),
                ("p50", "p50 ms", ".2f"),
                ("p99", "p99 ms", ".2f"),
                ("vs_naive", "vs naive", ".2f"),
                ("vs_ceiling", "vs bare", ".2f"),
                ("cpu_us", "web CPU us/req", ".0f"),
                *SERVER_COLUMNS,
                ("redis_bytes_per_event", "Redis B/queued event", ".0f"),
            ],
        )
        tops(results["ingest"])
    if "ack" in results:
        table(
            f"ack latency, open loop, one web, Redis on loopback ({args.seconds:g} s a rate)",
            results["ack"],
            base.get("ack", {}),
            [
                ("p50", "p50 ms", ".2f"),
                ("p99", "p99 ms", ".2f"),
                ("p999", "p99.9 ms", ".2f"),
                ("cpu_us", "web CPU us/delivery", ".0f"),
                ("rss_mb", "web RSS MB", ".0f"),
                ("redis_bytes_per_event", "Redis B/queued event", ".0f"),
                *SERVER_COLUMNS,
            ],
        )
        tops(results["ack"])
    if "drain" in results:
        table(
            f"worker drain of a {args.backlog:,}-event backlog (20% first links, 80% read.completed)",
            results["drain"],
            base.get("drain", {}),
            [
                ("rate", "events/s", ",.0f"),
                ("vs_one", "vs 1 worker", ".2f"),
                ("cpu_us", "worker CPU us/event", ".0f"),
                *SERVER_COLUMNS,
            ],
        )
        tops(results["drain"])
    if "codat" in results:
        table(
            "webhook -> Codat call (data/all), open loop, one web, one worker",
            results["codat"],
            base.get("codat", {}),
            [
                ("p50", "p50 ms", ".1f"),
                ("p99", "p99 ms", ".1f"),
                ("calls", "calls", ".0f"),
                ("idle_cpu_pct", "idle worker CPU %", ".1f"),
            ],
        )
    if "replicated" in results:
        table(
            f"ack latency, open loop, one web, one replica on loopback ({args.seconds:g} s a round)",
            results["replicated"],
            base.get("replicated", {}),
            [
                ("p50", "p50 ms", ".2f"),
                ("p99", "p99 ms", ".2f"),
                ("p999", "p99.9 ms", ".2f"),
                ("cpu_us", "web CPU us/delivery", ".0f"),
                *SERVER_COLUMNS,
            ],
        )
        tops(results["replicated"])
    if args.save_baseline:
        merged = {**base, **results}
        note = input_note()
        BASELINE.write_bytes(
            orjson.dumps({"note": note, "rtt_ms": rtt, "results": merged}, option=orjson.OPT_INDENT_2) + b"\n"
        )
        print(f"\nbaseline written: {BASELINE}")
    return 0


def input_note() -> str:
    return os.environ.get("BENCH_BASELINE_NOTE", "saved baseline")


if __name__ == "__main__":
    sys.exit(main())
