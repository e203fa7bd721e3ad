"""`make failover`: the three failover scenarios, several rounds each, with REDIS_MIN_REPLICAS 0
(before) and 1 (after), against real processes: a primary, two replicas (AOF), three sentinels
(tests/failover/cluster.py), the sandbox Codat, one web and two workers on `redis+sentinel://`.
Traffic is first links (`connection.connected` for connections Codat has as Linked), each
delivery retried until answered 2xx, as Codat does.

- killed:  the primary is SIGKILLed under traffic;
- cut_off: the primary is cut off from the sentinels and its replicas but not from the service
           (ACLs, see cluster.py), a replica is promoted, then the split heals and the old
           primary is demoted (what it took meanwhile is thrown away);
- lagging: the replicas fall behind (their link cut: cluster.detach_replicas) while deliveries
           arrive, then the primary is killed.

Reported per run: deliveries acknowledged (2xx) and of those lost (no dedup record on the final
primary), first syncs doubled (more than one data/all call) and missed (none), connection states
wrong (not Linked with its initial sync requested), seconds from the fault to the first 2xx of
a delivery sent after it. All but the last must be 0 with REDIS_MIN_REPLICAS=1.

    python -m tests.failover [--rounds 2] [--rate 40] [--replicas 0,1] [--scenarios killed,cut_off,lagging]
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.failover.cluster import Cluster
from tests.failover.traffic import Sender
from tests.support import Sandbox, SandboxControl, Web, Workers, connection_event, ids, service_env

SCENARIOS = ("killed", "cut_off", "lagging")


class Round:
    def __init__(self, root: Path, replicas: int, rate: float) -> None:
        self.root = root
        self.rate = rate
        self.cluster = Cluster(root / "cluster").start()
        self.sandbox_process = Sandbox(root / "sandbox.log").start()
        self.sandbox = SandboxControl(self.sandbox_process.url)
        settings = {"REDIS_MIN_REPLICAS": str(replicas), "REDIS_REPLICA_TIMEOUT_MS": "500"}
        self.web = Web(service_env(self.cluster.url, **settings), root / "web.log").start()
        self.workers = Workers(self.cluster.url, self.sandbox.url, root)
        self.workers.start(2, **settings)
        self.sender = Sender(self.web.url, retry_after=0.5)
        self.connections: dict[str, str] = {}  # message id -> connection id
        self.companies: dict[str, str] = {}  # connection id -> company id

    def first_link(self) -> dict[str, Any]:
        company, connection = ids()
        self.sandbox.seed(company, connection, "Linked")
        self.companies[connection] = company
        return connection_event("connection.connected", company, connection, "Linked")

    def traffic(self, seconds: float) -> None:
        self.sender.run(self.rate, seconds, self.first_link)

    def stop(self) -> None:
        self.workers.stop()
        self.web.stop()
        self.sandbox_process.stop()
        self.cluster.stop()

    def settle(self, timeout: float = 90) -> None:
        """Until every delivery is answered and the workers have nothing left to do."""
        self.sender.finish(timeout=60)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                primary = self.cluster.primary().client()
                if primary.zcard("arq:queue") == 0 and not primary.keys("arq:in-progress:*"):
                    return
            except Exception:  # a failover may still be settling
                pass
            time.sleep(0.5)

    def measure(self, fault_at: float) -> dict[str, Any]:
        primary = self.cluster.primary().client(decode_responses=True)
        acked = self.sender.acked()
        lost = [d for d in acked if not primary.exists(f"codat:seen:{d.msg_id}")]
        calls = collections.Counter(c["companyId"] for c in self.sandbox.calls(path_end="/data/all", method="POST"))
        doubled = missed = wrong = 0
        for delivery in acked:
            connection = delivery.body["payload"]["connection"]["id"]
            company = self.companies[connection]
            count = calls.get(company, 0)
            doubled += count > 1
            missed += count == 0
            state = primary.hmget(f"codat:connection:{connection}", "status", "initialSync")
            wrong += state != ["Linked", "requested"]
        return {
            "sent": len(self.sender.deliveries),
            "acked": len(acked),
            "lost": len(lost),
            "doubled": doubled,
            "missed": missed,
            "wrong": wrong,
            "first_2xx_s": self.sender.first_ack_after(fault_at),
        }


def run(scenario: str, root: Path, replicas: int, rate: float) -> dict[str, Any]:
    trial = Round(root, replicas, rate)
    cluster = trial.cluster
    try:
        trial.traffic(2)
        old = cluster.primary()
        fault_at = time.monotonic()
        if scenario == "killed":
            old.kill()
            trial.traffic(6)
        elif scenario == "cut_off":
            cluster.cut_off(old)
            trial.traffic(1)
            cluster.wait_failover(old.port)
            trial.traffic(3)
            cluster.heal(old)  # the sentinels demote it: what it took meanwhile is gone
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and old.client().execute_command("ROLE")[0] != b"slave":
                trial.traffic(0.5)
            trial.traffic(2)
        elif scenario == "lagging":
            cluster.detach_replicas(old)
            trial.traffic(1.5)
            old.kill()
            cluster.wait_failover(old.port)
            trial.traffic(3)
        trial.settle()
        return trial.measure(fault_at)
    finally:
        trial.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.failover", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rate", type=float, default=40, help="new deliveries a second")
    parser.add_argument("--replicas", default="0,1", help="REDIS_MIN_REPLICAS values to run, comma-separated")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--keep", action="store_true", help="keep the processes' logs and data")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="failover-"))
    print(
        f"{'scenario':<9} {'N':>2} {'round':>5} {'sent':>5} {'2xx':>5} {'lost':>5} {'doubled':>7} {'missed':>6}"
        f" {'wrong':>5} {'first 2xx after fault':>22}",
        flush=True,
    )
    failures = 0
    for scenario in args.scenarios.split(","):
        for replicas in (int(n) for n in args.replicas.split(",")):
            for number in range(1, args.rounds + 1):
                root = base / f"{scenario}-n{replicas}-{number}"
                result = run(scenario, root, replicas, args.rate)
                back = result["first_2xx_s"]
                print(
                    f"{scenario:<9} {replicas:>2} {number:>5} {result['sent']:>5} {result['acked']:>5}"
                    f" {result['lost']:>5} {result['doubled']:>7} {result['missed']:>6} {result['wrong']:>5}"
                    f" {'-' if back is None else f'{back:.2f} s':>22}",
                    flush=True,
                )
                if replicas and any(result[k] for k in ("lost", "doubled", "missed", "wrong")):
                    failures += 1
    if args.keep:
        print(f"logs and data: {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
