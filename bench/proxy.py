"""A TCP proxy that delays every byte by a fixed time in each direction: Redis "across a network"
on one machine (Linux netem is not available here).

    python -m bench.proxy --listen 7001 --target 127.0.0.1:6379 --delay-ms 1

Each direction keeps its own FIFO of (due time, bytes) and one timer, so order is kept and a
burst is not serialised behind the delay: bytes read at t are written at t + delay. It runs in
a process of its own, on uvloop, so that the bench's own work does not stretch the delay.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import socket
import time

import uvloop


class _Direction:
    """Bytes read on one side, written to the other `delay` later."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self.loop = loop
        self.delay = delay
        self.out: asyncio.Transport | None = None
        self.fifo: collections.deque[tuple[float, bytes]] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None
        self.closing = False

    def push(self, data: bytes) -> None:
        self.fifo.append((self.loop.time() + self.delay, data))
        if self.timer is None:
            self.timer = self.loop.call_at(self.fifo[0][0], self._flush)

    def close_after(self) -> None:
        self.closing = True
        if self.timer is None:
            self.timer = self.loop.call_at(self.loop.time() + self.delay, self._flush)

    def _flush(self) -> None:
        self.timer = None
        now = self.loop.time()
        if self.out is None:  # the upstream connection is still being made
            self.timer = self.loop.call_at(now + 0.0002, self._flush)
            return
        chunks = []
        while self.fifo and self.fifo[0][0] <= now + 0.0001:
            chunks.append(self.fifo.popleft()[1])
        if chunks and not self.out.is_closing():
            self.out.write(b"".join(chunks))
        if self.fifo:
            self.timer = self.loop.call_at(self.fifo[0][0], self._flush)
        elif self.closing:
            self.out.close()


class _Side(asyncio.Protocol):
    def __init__(self, direction: _Direction) -> None:
        self.direction = direction  # what this side reads goes there
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.direction.push(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.direction.close_after()


async def _serve(listen: int, host: str, port: int, delay: float) -> None:
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()

    def client_side() -> _Side:
        upstream_dir = _Direction(loop, delay)  # client -> server
        downstream_dir = _Direction(loop, delay)  # server -> client
        client = _Side(upstream_dir)

        async def connect() -> None:
            try:
                transport, _ = await loop.create_connection(lambda: _Side(downstream_dir), host, port)
            except OSError:
                if client.transport is not None:
                    client.transport.close()
                return
            upstream_dir.out = transport  # type: ignore[assignment]

        original_made = client.connection_made

        def made(transport: asyncio.BaseTransport) -> None:
            original_made(transport)
            downstream_dir.out = transport  # type: ignore[assignment]
            pending.add(task := loop.create_task(connect()))
            task.add_done_callback(pending.discard)

        client.connection_made = made  # type: ignore[method-assign]
        return client

    server = await loop.create_server(client_side, "127.0.0.1", listen, reuse_address=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--target", required=True, help="host:port")
    parser.add_argument("--delay-ms", type=float, default=1.0, help="each direction")
    args = parser.parse_args()
    host, port = args.target.rsplit(":", 1)
    uvloop.run(_serve(args.listen, host, int(port), args.delay_ms / 1000))


def measure_rtt_ms(port: int, count: int = 200) -> float:
    """Median PING round trip through whatever listens on `port` (Redis or this proxy)."""
    import redis

    client = redis.Redis(port=port)
    client.ping()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        client.ping()
        samples.append(time.perf_counter() - started)
    client.close()
    samples.sort()
    return samples[len(samples) // 2] * 1000


if __name__ == "__main__":
    main()
