"""A small HTTP/1.1 keep-alive load generator on raw asyncio streams.

Python HTTP clients (httpx, aiohttp) cost more per request than the servers under test, so
they would measure themselves. This one writes pre-built requests and parses only the status
line and Content-Length.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence


def build_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one response off a keep-alive connection; its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return int(head[9:12])


async def _connection(
    host: str, port: int, requests: list[bytes], latencies: list[float], statuses: dict[int, int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for request in requests:
            started = time.perf_counter()
            writer.write(request)
            status = await read_response(reader)
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def run(host: str, port: int, requests: Sequence[bytes], connections: int) -> dict[str, object]:
    """Send every request once, spread over `connections` keep-alive connections."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    shares = [list(requests[i::connections]) for i in range(connections)]
    started = time.perf_counter()
    await asyncio.gather(*(_connection(host, port, share, latencies, statuses) for share in shares))
    elapsed = time.perf_counter() - started
    return {"requests": len(latencies), "rps": len(latencies) / elapsed, "latencies": latencies, "statuses": statuses}
