"""Codat's side of the wire: each delivery signed as Svix signs it (standardwebhooks), sent by a
concurrent client, and retried after a 503 or a dropped connection until it is acknowledged, as
Codat retries (on a schedule compressed from hours to a second)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
from standardwebhooks import Webhook

from tests.soak.generator import Delivery

CODAT_TIMEOUT_SECONDS = 15.0  # how long Codat waits for an answer
GIVE_UP_SECONDS = 300.0  # per delivery; Codat's own is 28 h, a soak has to end


@dataclass
class Sent:
    deliveries: int = 0
    retried: int = 0  # attempts answered 503, 5xx or not at all, then tried again
    ack_ms: list[float] = field(default_factory=list)  # the answering attempt's own time, 2xx only
    statuses: dict[int, int] = field(default_factory=dict)
    refused: list[tuple[str, int, str]] = field(default_factory=list)  # (msg id, status, body): 4xx
    undelivered: list[str] = field(default_factory=list)
    # (connection, event index) -> wall time of the first 2xx for any delivery of that event
    first_ack: dict[tuple[int, int], float] = field(default_factory=dict)
    seconds: float = 0.0


class Sender:
    def __init__(self, url: str, secret: str, concurrency: int) -> None:
        self.url = url
        self.webhook = Webhook(secret)
        self.concurrency = concurrency
        self.sent = Sent()

    def _headers(self, msg_id: str, body: str) -> dict[str, str]:
        now = datetime.now(tz=UTC)
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self.webhook.sign(msg_id, now, body),
            "content-type": "application/json",
        }

    async def _deliver(self, client: httpx.AsyncClient, delivery: Delivery) -> None:
        body = delivery.event.body.decode()
        give_up = time.monotonic() + GIVE_UP_SECONDS
        while True:
            started = time.perf_counter()
            status, retry_after, text = 0, 0.5, ""
            try:
                # Signed afresh per attempt: a retry carries a new timestamp, as Svix's do.
                response = await client.post(self.url, content=body, headers=self._headers(delivery.msg_id, body))
                status, text = response.status_code, response.text[:200]
                retry_after = float(response.headers.get("retry-after", "0.5") or 0.5)
            except (httpx.HTTPError, ValueError):
                pass
            self.sent.statuses[status] = self.sent.statuses.get(status, 0) + 1
            if 200 <= status < 300:
                self.sent.ack_ms.append((time.perf_counter() - started) * 1000)
                key = (delivery.event.connection, delivery.event.index)
                self.sent.first_ack.setdefault(key, time.time())
                return
            if 400 <= status < 500:
                self.sent.refused.append((delivery.msg_id, status, text))
                return
            if time.monotonic() > give_up:
                self.sent.undelivered.append(delivery.msg_id)
                return
            self.sent.retried += 1
            await asyncio.sleep(min(retry_after, 1.0))

    async def send(self, steps: list[list[Delivery]], progress: Callable[[float], None]) -> Sent:
        slots = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency + 8, max_keepalive_connections=self.concurrency + 8)
        started = time.perf_counter()

        async def one(client: httpx.AsyncClient, delivery: Delivery) -> None:
            try:
                await self._deliver(client, delivery)
            finally:
                slots.release()

        async with httpx.AsyncClient(timeout=CODAT_TIMEOUT_SECONDS, limits=limits) as client:
            tasks = []
            for number, step in enumerate(steps):
                for delivery in step:  # copies in one step leave together: concurrent duplicates
                    await slots.acquire()
                    tasks.append(asyncio.create_task(one(client, delivery)))
                    self.sent.deliveries += 1
                progress(number / len(steps))
            await asyncio.gather(*tasks)
        progress(1.0)
        self.sent.seconds = time.perf_counter() - started
        return self.sent
