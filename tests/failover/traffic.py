"""Deliveries as Codat sends them during a failover: each message retried until it is answered
2xx (Codat retries for 28 h; here after `retry_after` seconds, shortened for a test), and what
the web answered, when."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from tests.support import sign


@dataclass
class Delivery:
    msg_id: str
    body: dict[str, Any]
    sent_at: float
    retry: bool = True  # retried until 2xx, as Codat does
    statuses: list[int] = field(default_factory=list)
    acked_at: float | None = None  # the first 2xx

    @property
    def acked(self) -> bool:
        return self.acked_at is not None


class Sender:
    def __init__(self, url: str, retry_after: float = 0.2, threads: int = 32) -> None:
        self.url = url
        self.retry_after = retry_after
        self.deliveries: list[Delivery] = []
        self._pool = ThreadPoolExecutor(threads)
        self._local = threading.local()
        self._stop_retrying_at = float("inf")
        self._lock = threading.Lock()

    def _client(self) -> httpx.Client:
        if not hasattr(self._local, "client"):
            self._local.client = httpx.Client(base_url=self.url, timeout=10)
        return self._local.client  # type: ignore[no-any-return]

    def send(self, body: dict[str, Any], msg_id: str | None = None, retry: bool = True) -> Delivery:
        delivery = Delivery(msg_id or f"msg_{uuid.uuid4().hex}", body, time.monotonic(), retry)
        with self._lock:
            self.deliveries.append(delivery)
        self._pool.submit(self._deliver, delivery)
        return delivery

    def _deliver(self, delivery: Delivery) -> None:
        raw = orjson.dumps(delivery.body)
        while True:
            try:
                status = self._client().post("/webhooks/codat", content=raw, headers=sign(raw, msg_id=delivery.msg_id))
                delivery.statuses.append(status.status_code)
                if status.status_code < 300:
                    delivery.acked_at = time.monotonic()
                    return
            except httpx.TransportError:
                delivery.statuses.append(0)
            if not delivery.retry or time.monotonic() > self._stop_retrying_at:
                return
            time.sleep(self.retry_after)

    def run(self, rate: float, seconds: float, body: Callable[[], dict[str, Any]]) -> None:
        """`rate` new deliveries a second for `seconds`, each retried until answered 2xx."""
        started = time.monotonic()
        sent = 0
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(elapsed * rate) + 1
            while sent < due:
                self.send(body())
                sent += 1
            time.sleep(max(0.0, (sent / rate) - (time.monotonic() - started)))

    def finish(self, timeout: float = 60) -> None:
        """Until every delivery that is retried is answered 2xx (or `timeout`: then retries stop)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(d.acked for d in list(self.deliveries) if d.retry):
            time.sleep(0.05)
        self._stop_retrying_at = time.monotonic()
        self._pool.shutdown(wait=True)

    def acked(self) -> list[Delivery]:
        return [d for d in self.deliveries if d.acked]

    def first_ack_after(self, moment: float) -> float | None:
        """Seconds from `moment` (a fault) to the first 2xx of a delivery sent after it."""
        times = [d.acked_at for d in self.deliveries if d.acked_at is not None and d.sent_at > moment]
        return min(times) - moment if times else None
