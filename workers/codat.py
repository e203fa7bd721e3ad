"""The Codat API, as far as the workers call it.

aiohttp, not the official `codat-platform` SDK. The SDK is async and takes a server URL, but it
retries by sleeping inside the call (holding a worker slot, where a 429 must defer the job), its
errors do not carry Retry-After in a form a job can act on, and it brings a pydantic model layer
for four endpoints. Nor httpx (which the command-line tool uses): its pool polls every pooled
connection's socket on every request, and a call cost the worker several times aiohttp's CPU
(docs/maintainer/decisions.md has the figures). What httpx read from the environment is read
here too: the proxy variables (HTTPS_PROXY, NO_PROXY: `env_proxy`, once) and SSL_CERT_FILE /
SSL_CERT_DIR (`trust`; certifi's bundle otherwise). Redirects are not followed, as with httpx.
Here every failure is sorted into one of three kinds the job policy acts on:

- RateLimited: 429. Defer the job by Retry-After.
- Unavailable: 5xx, timeout, connection error. Retry with backoff. The request may have been
  carried out (a timeout after sending, a 504 from a gateway), so a caller that must not repeat
  it treats the outcome as in doubt.
- Rejected: any other 4xx, or a 3xx (no operation answers one: Codat's OpenAPI document,
  Codat-Platform.json, lists 2xx, 4xx and 5xx answers only; not followed, nothing was done).
  Permanent: no retries.

Two answers are not failures. DatasetAlreadyInProgressException (400 or 409; Codat documents the
text, not the status: https://docs.codat.io/using-the-api/queueing-data-syncs) means the data type
is being pulled right now: the queue calls return "in_progress" instead of raising. And before a
call that names a company, a slot of that company's (service.stores.slots) is taken: Codat allows
10 concurrent requests per company (https://docs.codat.io/using-the-api/rate-limits), so past
that the call is not made and CompanyBusy, a RateLimited, defers the job a moment. The same
script call reads the rate-limit pause (Paused: the call is not made); a call that names no
company reads it alone (`before_call`), and a data/all made under the company's lock has both
taken by the lock (`slot_held`). Every answer's X-Rate-Limit-* headers go into gauges, so the
daily quota is seen running out.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import ssl
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

import aiohttp
import certifi
import orjson

from service.stores.slots import CompanySlots
from workers.metrics import CODAT_CALL_SECONDS, CODAT_CALLS, CODAT_QUOTA
from workers.rate_limit import Paused

IN_PROGRESS = "DatasetAlreadyInProgressException"
Queued = str  # "queued": Codat queued it now; "in_progress": a pull of it was already running

DEFAULT_RETRY_AFTER_SECONDS = 5.0


def basic_auth(api_key: str) -> str:
    """Codat's Authorization header: "Basic " + base64 of the API key."""
    return f"Basic {base64.b64encode(api_key.encode()).decode()}"


class CodatError(Exception):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RateLimited(CodatError):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message, 429)
        self.retry_after = retry_after


class Unavailable(CodatError):
    pass


class Rejected(CodatError):
    pass


class CompanyBusy(RateLimited):
    """The company's calls in flight are at Codat's limit: try again in a moment (jittered, so
    that waiting jobs do not come back together)."""

    def __init__(self, company_id: str) -> None:
        # 12 tries x ~2 s outlast a slot or lock left by a dead worker (15 s leases): never a dead letter
        super().__init__(f"{company_id}: Codat's concurrent requests per company in use", random.uniform(1.0, 3.0))


def company_busy(operation: str, company_id: str) -> CompanyBusy:
    """The call was not made: the company's slots were all in use (counted as such)."""
    CODAT_CALLS.labels(operation, "company_busy").inc()
    return CompanyBusy(company_id)


class _AlreadyInProgress(CodatError):
    """Raised inside this module only: the queue calls turn it into "in_progress"."""


@dataclass(frozen=True)
class Response:
    """A Codat answer, read whole (Codat's answers here are small JSON documents)."""

    status_code: int
    headers: Mapping[str, str]  # aiohttp's: names case-insensitive, as HTTP has them
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)

    @cached_property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


class CodatClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        before_call: Callable[[], Awaitable[None]] | None = None,
        slots: CompanySlots | None = None,
        timeout: float = 10.0,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._headers = {"Authorization": basic_auth(api_key), "Accept": "application/json"}
        # A whole call (connect, send, answer read) within `timeout`; connecting within 3 s.
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=3.0)
        self._http: aiohttp.ClientSession | None = None  # made on the first call, in its loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._proxy: str | None = None
        # Run before every call that takes no company slot (the slot's script reads the pause):
        # the rate-limit pause raises from here (workers.rate_limit).
        self._before_call = before_call
        self._slots = slots

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()

    def _session(self) -> aiohttp.ClientSession:
        # A session serves the event loop it was made in (a test may call from another one).
        loop = asyncio.get_running_loop()
        if self._http is None or self._http.closed or self._loop is not loop:
            self._loop = loop
            # Not aiohttp's trust_env: it looks for a proxy and a .netrc in a thread of its own
            # on every call (~0.4 ms of CPU a call here); every call goes to the one Codat host,
            # so the environment's proxy for it is read once, here.
            self._proxy = env_proxy(self._base_url)
            self._http = aiohttp.ClientSession(
                headers=self._headers,
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(ssl=trust()),
                raise_for_status=False,
            )
        return self._http

    async def get_connection(self, company_id: str, connection_id: str) -> dict[str, Any] | None:
        """The connection as Codat has it now; None if Codat no longer knows it (deleted)."""
        try:
            path = f"/companies/{company_id}/connections/{connection_id}"
            return (await self._call("get_connection", "GET", path, company_id=company_id)).json()
        except Rejected as exc:
            if exc.status == 404:
                return None
            raise

    async def list_companies(self, page: int, page_size: int) -> tuple[list[dict[str, Any]], bool]:
        """One page of companies (each with its `dataConnections`), and whether more follow."""
        response = await self._call("list_companies", "GET", "/companies", params={"page": page, "pageSize": page_size})
        body = response.json()
        results = body.get("results") if isinstance(body, dict) else None
        results = [r for r in results if isinstance(r, dict)] if isinstance(results, list) else []
        total = body.get("totalResults") if isinstance(body, dict) else None
        more = page * page_size < total if isinstance(total, int) else len(results) == page_size
        return results, more

    async def get_company(self, company_id: str) -> dict[str, Any] | None:
        """The company with its `dataConnections`; None if Codat does not know it."""
        try:
            path = f"/companies/{company_id}"
            return (await self._call("get_company", "GET", path, company_id=company_id)).json()
        except Rejected as exc:
            if exc.status == 404:
                return None
            raise

    async def refresh_all(self, company_id: str, slot_held: bool = False) -> Queued:
        """`slot_held`: the company's lock took the call's slot, and read the pause, just before
        (service.stores.companies); it is given back with the lock, not here."""
        try:
            await self._call(
                "refresh_all", "POST", f"/companies/{company_id}/data/all", company_id=company_id, slot_held=slot_held
            )
        except _AlreadyInProgress:
            return "in_progress"
        return "queued"

    async def refresh_data_type(self, company_id: str, connection_id: str, data_type: str) -> Queued:
        try:
            await self._call(
                "refresh_data_type",
                "POST",
                f"/companies/{company_id}/data/queue/{data_type}",
                params={"connectionId": connection_id},
                company_id=company_id,
            )
        except _AlreadyInProgress:
            return "in_progress"
        return "queued"

    async def sync_settings(self, company_id: str | None) -> list[dict[str, Any]] | None:
        """The company's sync settings (`SyncSetting`s), or the client's with `company_id` None;
        None when Codat has none to give (a 404, or an empty list)."""
        path = f"/companies/{company_id}/syncSettings" if company_id else "/profile/syncSettings"
        try:
            response = await self._call("sync_settings", "GET", path, company_id=company_id)
        except Rejected as exc:
            if exc.status == 404:
                return None
            raise
        body = response.json()
        settings = body.get("settings") if isinstance(body, dict) else None
        return [s for s in settings if isinstance(s, dict)] or None if isinstance(settings, list) else None

    async def pull_history(self, company_id: str, page_size: int = 200) -> list[dict[str, Any]]:
        """The company's most recent pull operations, newest first."""
        response = await self._call(
            "pull_history",
            "GET",
            f"/companies/{company_id}/data/history",
            params={"page": 1, "pageSize": page_size, "orderBy": "-requested"},
            company_id=company_id,
        )
        results = response.json().get("results")
        return results if isinstance(results, list) else []

    async def _call(
        self,
        operation: str,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        company_id: str | None = None,
        slot_held: bool = False,
    ) -> Response:
        token = ""  # the slot this call takes, and gives back after it
        if slot_held:
            pass
        elif company_id and self._slots is not None:
            token = uuid.uuid4().hex
            taken = await self._slots.take(company_id, token)  # the pause and the slot: one round trip
            if taken.outcome == "paused":
                raise Paused(taken.paused_until or 0)
            if taken.outcome != "taken":
                raise company_busy(operation, company_id)
        elif self._before_call is not None:
            await self._before_call()
        try:
            response = await self._request(operation, method, path, params)
        finally:
            if token and company_id and self._slots is not None:
                await self._slots.give_back(company_id, token)
        _record_quota(response.headers)
        status = response.status_code
        if status < 300:
            return response
        where = f"{method} {path}"
        detail = f"{where}: HTTP {status} {response.text[:200]}"
        if status == 429:
            raise RateLimited(detail, _retry_after(response.headers.get("retry-after")))
        if status >= 500:
            raise Unavailable(detail, status)
        if status in (400, 409) and IN_PROGRESS in response.text:
            raise _AlreadyInProgress(detail, status)
        raise Rejected(detail, status)

    async def _request(self, operation: str, method: str, path: str, params: dict[str, Any] | None) -> Response:
        started = time.perf_counter()
        where = f"{method} {path}"
        try:
            session = self._session()
            url = self._base_url + path
            async with session.request(method, url, params=params, proxy=self._proxy, allow_redirects=False) as answer:
                response = Response(answer.status, answer.headers, await answer.read())
        except TimeoutError as exc:  # aiohttp's own timeouts are TimeoutErrors too
            CODAT_CALLS.labels(operation, "timeout").inc()
            raise Unavailable(f"{where}: timed out ({type(exc).__name__})") from exc
        except aiohttp.ClientError as exc:  # connecting, a connection dropped, an answer cut short
            CODAT_CALLS.labels(operation, "connection_error").inc()
            raise Unavailable(f"{where}: {type(exc).__name__}") from exc
        finally:
            CODAT_CALL_SECONDS.labels(operation).observe(time.perf_counter() - started)
        CODAT_CALLS.labels(operation, str(response.status_code)).inc()
        return response


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for `url`: HTTPS_PROXY / HTTP_PROXY (or ALL_PROXY) unless
    NO_PROXY covers its host, as httpx and curl read them; one given without a scheme
    (`proxy.corp:3128`) is an http:// one, as httpx took it."""
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname or urllib.request.proxy_bypass(parts.hostname):
        return None
    found = urllib.request.getproxies()
    proxy = found.get(parts.scheme) or found.get("all")
    return proxy if not proxy or "://" in proxy else f"http://{proxy}"


def trust() -> ssl.SSLContext:
    """The CAs a Codat call trusts: SSL_CERT_FILE / SSL_CERT_DIR when set (a TLS-inspecting proxy's
    own CA, say), as httpx read them; certifi's bundle otherwise, as httpx had it."""
    cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if cafile or capath:
        return ssl.create_default_context(cafile=cafile, capath=capath)
    return ssl.create_default_context(cafile=certifi.where())


def _record_quota(headers: Mapping[str, str]) -> None:
    """X-Rate-Limit-Limit / -Remaining / -Reset (https://docs.codat.io/using-the-api/rate-limits,
    "Rate limit headers"): the client's daily quota as Codat counts it."""
    for name, label in (("x-rate-limit-limit", "limit"), ("x-rate-limit-remaining", "remaining")):
        value = headers.get(name)
        if value is not None and value.strip().isdigit():
            CODAT_QUOTA.labels(label).set(int(value))
    reset = headers.get("x-rate-limit-reset")
    if reset:
        try:
            CODAT_QUOTA.labels("reset_timestamp_seconds").set(datetime.fromisoformat(reset).timestamp())
        except ValueError:
            pass  # a date Codat writes otherwise: the two counts are what alerting reads


def _retry_after(value: str | None) -> float:
    # Codat sends seconds. An HTTP date, or nothing usable, gets a conservative default.
    try:
        return max(0.0, float(value)) if value is not None else DEFAULT_RETRY_AFTER_SECONDS
    except ValueError:
        return DEFAULT_RETRY_AFTER_SECONDS
