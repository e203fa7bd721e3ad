"""Webhook delivery as Codat's (Svix) does it: signed with the standardwebhooks library under
`webhook-*` headers, at least once, each attempt signed afresh, retried after any answer that is
not 2xx on Codat's schedule. Time is compressed by `time_scale` for development and tests.
Consumers are loopback URLs only unless `allow_any_host` (sandbox.inputs.url_refusal)."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from standardwebhooks import Webhook

from sandbox.inputs import url_refusal
from sandbox.state import now_iso

# Seconds before each attempt: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h; then
# the message is given up (~28 h), and a consumer failing for 5 days is disabled.
SCHEDULE = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
DISABLE_AFTER_SECONDS = 5 * 24 * 3600


class Sender:
    def __init__(self, secret: str | None, time_scale: float = 0.01, allow_any_host: bool = False) -> None:
        self._webhook = Webhook(secret) if secret else None
        self.time_scale = time_scale
        self.allow_any_host = allow_any_host
        self.consumers: dict[str, dict[str, Any]] = {}
        self.attempts: list[dict[str, Any]] = []  # every attempt, for tests and the walkthrough
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None

    def add_consumer(
        self,
        url: str,
        event_types: list[str] | None = None,
        disabled: bool = False,
        company_tags: list[str] | None = None,
    ) -> dict[str, Any]:
        """Raises ValueError for a URL the sandbox will not deliver to (the API answers 400 first)."""
        refused = url_refusal(url, self.allow_any_host)
        if refused:
            raise ValueError(f"{refused}: {url!r}")
        consumer: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "url": url,
            "eventTypes": event_types or [],
            "disabled": disabled,
        }
        if company_tags is not None:
            consumer["companyTags"] = company_tags
        self.consumers[consumer["id"]] = consumer
        return consumer

    def emit(self, event_type: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send a new event to every consumer that takes its type; returns the event."""
        event = {"id": str(uuid.uuid4()), "eventType": event_type, "generatedDate": now_iso(), "payload": payload}
        raw = orjson.dumps(event)
        for consumer in self.consumers.values():
            wanted = consumer["eventTypes"]
            if consumer["disabled"] or (wanted and event_type not in wanted):
                continue
            task = asyncio.get_running_loop().create_task(
                self._deliver(consumer, f"msg_{uuid.uuid4().hex}", event_type, raw)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return event

    async def _deliver(self, consumer: dict[str, Any], msg_id: str, event_type: str, raw: bytes) -> None:
        url = consumer["url"]
        if self._webhook is None:
            self.attempts.append(
                {
                    "msgId": msg_id,
                    "eventType": event_type,
                    "url": url,
                    "attempt": 0,
                    "status": None,
                    "error": "no SANDBOX_WEBHOOK_SECRET: not sent",
                }
            )
            return
        self._http = self._http or httpx.AsyncClient(timeout=15.0)  # Codat waits 15 s
        text = raw.decode()
        for attempt, wait in enumerate(SCHEDULE, start=1):
            await asyncio.sleep(wait * self.time_scale)
            if consumer["disabled"]:
                break
            now = datetime.now(tz=UTC)
            headers = {
                "webhook-id": msg_id,
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": self._webhook.sign(msg_id, now, text),
                "content-type": "application/json",
            }
            record: dict[str, Any] = {
                "msgId": msg_id,
                "eventType": event_type,
                "url": url,
                "attempt": attempt,
                "at": time.time(),
            }
            try:
                response = await self._http.post(url, content=raw, headers=headers)
                record["status"] = response.status_code
            except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
                # InvalidURL and ValueError (IDNA) are not HTTPErrors; an attempt must never raise.
                record["status"], record["error"] = None, type(exc).__name__
            self.attempts.append(record)
            if record["status"] is not None and 200 <= record["status"] < 300:
                consumer.pop("failingSince", None)
                return
            self._failed(consumer, record["at"])
        # Codat has no replay API: what was not delivered by now is gone for good.
        self.attempts.append({"msgId": msg_id, "eventType": event_type, "url": url, "givenUp": True, "at": time.time()})

    def _failed(self, consumer: dict[str, Any], at: float) -> None:
        since = consumer.setdefault("failingSince", at)
        # time_scale 0 (no waiting at all) models no time passing: never disabled.
        if self.time_scale > 0 and not consumer["disabled"] and at - since >= DISABLE_AFTER_SECONDS * self.time_scale:
            consumer["disabled"] = True
            self.attempts.append({"consumerDisabled": consumer["id"], "url": consumer["url"], "at": at})

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._http is not None:
            await self._http.aclose()
