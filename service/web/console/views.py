"""The console's pages. Each reads the stores the workers write (service.stores.*) and renders
a template; none writes anything but a dead letter's replay, behind a session and a CSRF token.

Every value shown comes from Codat or a webhook and is untrusted text: templates autoescape it,
known credentials are masked from every value rendered (service.core.logs.Masker), links carry
ids as one escaped path segment, and the stylesheet wraps long values and isolates their
direction. Redis away: the page says so (503), never a 500. Lists say what they leave out."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import jinja2
import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from service.core.clock import iso, now_ms
from service.core.config import Settings
from service.core.logs import Masker
from service.stores import activity, delivery_health, keys
from service.stores.connections import ConnectionStore
from service.stores.deadletters import DeadLetters
from service.stores.gaps import GapStore
from service.stores.history import HistoryStore
from service.stores.lifecycle import LifecycleStream
from service.stores.rate_limit import RateLimits
from service.stores.reconcile import ReconcileStore
from service.stores.sessions import RevokedSessions
from service.stores.syncs import SyncStore
from service.web.console import chart, explain
from service.web.console.auth import (
    COOKIE_PATH,
    LOGIN_COOKIE,
    LOGIN_SECONDS,
    SESSION_COOKIE,
    SESSION_SECONDS,
    Access,
)
from service.web.guessing import WrongGuesses

log = structlog.get_logger("service.console")

HERE = Path(__file__).resolve().parent
BASE = COOKIE_PATH
MAX_FORM_BYTES = 256 * 1024
LETTERS_SHOWN = 1000  # dead letters read per page (newest first); the count says how many there are
COMPANIES_SHOWN = 50
CONNECTIONS_PER_PAGE = 20  # a company's connections, each with its history table, a page at a time
COMPANY_LETTERS_SHOWN = 100  # a company's newest dead letters; the page says how many it has
DELIVERY_LETTERS_SHOWN = 100
MIN_PREFIX = 6  # shortest webhook id prefix looked up (the console log prints 8 characters)
PREFIX_MATCHES = 10
PREFIX_SCAN_COUNT = 1000
PREFIX_SCAN_CALLS = 50  # so at most ~50,000 keys looked at for one prefix lookup
REFRESH_SECONDS = 10
GAPS_SHOWN = 20  # the newest delivery gaps on the overview (`codat-webhooks gaps` lists more)

Handler = Callable[[Request], Awaitable[Response]]


class Form:
    """An application/x-www-form-urlencoded body (the only kind the console's forms send)."""

    def __init__(self, fields: dict[str, list[str]]) -> None:
        self._fields = fields

    def get(self, name: str, default: str = "") -> str:
        values = self._fields.get(name)
        return values[0] if values else default

    def getlist(self, name: str) -> list[str]:
        return list(self._fields.get(name, []))


class TooLarge(Exception):
    pass


async def read_form(request: Request) -> Form:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise TooLarge
    text = body.decode("utf-8", errors="replace")
    return Form(parse_qs(text, keep_blank_values=True, max_num_fields=5000))


def _when(value: Any) -> str:
    """Epoch ms or ISO 8601 -> `2026-12-01 22:55:22Z`; nothing -> an em dash."""
    if value is None or value == "":
        return "—"
    if isinstance(value, int | float) or (isinstance(value, str) and value.isdigit()):
        value = iso(int(value))
    text = str(value).replace("T", " ")
    if "." in text and text.endswith("Z"):
        text = text.split(".")[0] + "Z"
    return text


def _ago(ms: Any) -> str:
    if not isinstance(ms, int | float):
        return ""
    seconds = max(0, (now_ms() - ms) / 1000)
    if seconds < 90:
        return f"{int(seconds)} s ago"
    if seconds < 5400:
        return f"{int(seconds // 60)} min ago"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h ago"
    return f"{int(seconds // 86400)} days ago"


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def _page_number(value: str | None) -> int:
    return int(value) if value and value.isdigit() and 0 < int(value) < 1_000_000 else 1


def glob_literal(text: str) -> str:
    """`text` inside a Redis MATCH pattern, its glob characters taken literally."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def segment(value: Any) -> str:
    """A value as one URL path segment: `/` escaped too, so an id cannot add segments."""
    return quote(str(value), safe="")


def company_href(company_id: Any) -> str:
    """The company page's link. An id that would be a dot segment ("." or "..", which a browser
    resolves away, escaped or not) goes in the query string instead."""
    if str(company_id).strip(".") == "":
        return f"{BASE}/company?{urlencode({'id': str(company_id)})}"
    return f"{BASE}/companies/{segment(company_id)}"


def environment(secrets: list[str]) -> jinja2.Environment:
    masker = Masker(secrets)

    def finalize(value: Any) -> Any:
        # Applied to every {{ value }} before it is escaped: no credential the process holds is
        # ever written into a page, whatever a Codat error or an event happened to echo.
        return masker.text(value) if isinstance(value, str) else value

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every template is HTML
        finalize=finalize,
        undefined=jinja2.ChainableUndefined,  # event records are untrusted: a missing field is blank
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        when=_when,
        ago=_ago,
        seconds=_seconds,
        pretty=lambda value: orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode(),
        explain=explain.outcome,
        qs=lambda params: urlencode({k: v for k, v in params.items() if v}),
        segment=segment,
    )
    env.globals.update(base=BASE, refresh_seconds=REFRESH_SECONDS, company_href=company_href)
    return env


def safe_next(value: str | None) -> str:
    """Where to go after the login: only a console path, never another site."""
    if value and value.startswith(BASE + "/") and "//" not in value and "\\" not in value:
        return value
    return BASE + "/"


def same_origin(request: Request) -> bool:
    """Defence in depth behind the CSRF token: a POST whose Origin (or, without one, Referer)
    names another host is refused. Compared by host and port only: behind a TLS-terminating
    proxy the scheme the browser used is not the one this process sees. Neither header: allowed
    (some clients send none), the CSRF token still decides."""
    host = request.headers.get("host", "")
    origin = request.headers.get("origin")
    if origin is not None:
        return origin != "null" and urlsplit(origin).netloc == host
    referer = request.headers.get("referer")
    return referer is None or urlsplit(referer).netloc == host


class Console:
    def __init__(self, settings: Settings, redis: Redis, guesses: WrongGuesses | None = None) -> None:
        assert settings.ops_token, "the console exists only with OPS_TOKEN"
        self.access = Access(settings.ops_token, secure=settings.ops_cookie_secure)
        self.guesses = guesses or WrongGuesses()
        self.revoked = RevokedSessions(redis)
        self.redis = redis
        self.history = HistoryStore(redis)
        self.connections = ConnectionStore(redis)
        self.syncs = SyncStore(redis)
        self.letters = DeadLetters(redis, settings.credentials())
        self.reconciles = ReconcileStore(redis)
        self.rate_limits = RateLimits(redis)
        self.lifecycle = LifecycleStream(redis, settings.events_stream)
        self.templates = Jinja2Templates(env=environment(settings.credentials()))
        self.gaps = GapStore(redis)  # delivery health (issue 23): the overview's cards
        self.silence_ms = settings.silence_alert_seconds * 1000

    # --- plumbing -----------------------------------------------------------------------------

    def render(self, request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
        session = request.cookies.get(SESSION_COOKIE)
        logged_in = self.access.session_valid(session)
        csrf = self.access.csrf_token(session) if logged_in and session else ""
        return self.templates.TemplateResponse(
            request, name, {"csrf": csrf, "logged_in": logged_in, "nav": "", **context}, status_code=status
        )

    def refused(self, request: Request, why: str, status: int = 403) -> Response:
        return self.render(request, "refused.html", {"why": why}, status)

    async def session_open(self, session: str | None) -> bool:
        """Signed, not run out, and not ended by a logout (the last asks Redis)."""
        if not session or not self.access.session_valid(session):
            return False
        return not await self.revoked.revoked(self.access.nonce_of(session))

    def page(self, handler: Handler, *, public: bool = False) -> Handler:
        """Origin, session (and, for a POST, its CSRF token) first; Redis away: a 503 page, not a 500."""

        async def endpoint(request: Request) -> Response:
            try:
                if request.method == "POST" and not same_origin(request):
                    log.warning("ops.unauthorized", path=request.url.path, reason="origin")
                    return self.refused(request, "This form was posted from another site: nothing was done.")
                if not public:
                    session = request.cookies.get(SESSION_COOKIE)
                    if not await self.session_open(session):
                        if request.method == "GET":
                            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                            return RedirectResponse(f"{BASE}/login?{urlencode({'next': target})}", 303)
                        log.warning("ops.unauthorized", path=request.url.path, reason="no_session")
                        return self.refused(request, "You are not logged in (or the session ran out).", 401)
                    if request.method == "POST":
                        form = await read_form(request)
                        if not self.access.csrf_valid(session, form.get("csrf")):  # session: checked above
                            log.warning("ops.unauthorized", path=request.url.path, reason="csrf")
                            return self.refused(
                                request, "This form's CSRF token is missing or wrong: nothing was done."
                            )
                        request.state.form = form
                return await handler(request)
            except TooLarge:
                return self.refused(request, "The form was too large.", 413)
            except (RedisError, OSError) as exc:
                return self.render(request, "unavailable.html", {"error": type(exc).__name__}, 503)

        return endpoint

    def routes(self) -> list[Route]:
        page = self.page
        return [
            Route("/", page(self.overview), methods=["GET"]),
            Route("/login", page(self.login_form, public=True), methods=["GET"]),
            Route("/login", page(self.login, public=True), methods=["POST"]),
            Route("/logout", page(self.logout), methods=["POST"]),
            Route("/companies", page(self.companies), methods=["GET"]),
            Route("/companies/{company_id:path}", page(self.company), methods=["GET"]),
            Route("/company", page(self.company), methods=["GET"]),  # ?id=, for ids a path cannot carry
            Route("/deliveries", page(self.delivery), methods=["GET"]),
            Route("/dead-letters", page(self.dead_letters), methods=["GET"]),
            Route("/dead-letters/replay", page(self.confirm_replay_all), methods=["GET"]),
            Route("/dead-letters/replay", page(self.replay_all), methods=["POST"]),
            Route("/dead-letters/{letter_id}", page(self.dead_letter), methods=["GET"]),
            Route("/dead-letters/{letter_id}/replay", page(self.confirm_replay), methods=["GET"]),
            Route("/dead-letters/{letter_id}/replay", page(self.replay), methods=["POST"]),
        ]

    # --- access -------------------------------------------------------------------------------

    async def login_form(self, request: Request, error: str = "", status: int = 200) -> Response:
        target = safe_next(request.query_params.get("next"))
        session = request.cookies.get(SESSION_COOKIE)
        if error == "" and session and self.access.session_valid(session) and await self.session_open(session):
            return RedirectResponse(target, 303)
        nonce = request.cookies.get(LOGIN_COOKIE) or self.access.new_login_nonce()
        response = self.render(
            request,
            "login.html",
            {"login_csrf": self.access.login_csrf(nonce), "next": target, "error": error, "logged_in": False},
            status,
        )
        response.headers.append("set-cookie", self.access.cookie(LOGIN_COOKIE, nonce, LOGIN_SECONDS))
        return response

    async def login(self, request: Request) -> Response:
        form = await read_form(request)
        if not self.access.login_csrf_valid(request.cookies.get(LOGIN_COOKIE), form.get("csrf")):
            log.warning("ops.unauthorized", path=request.url.path, reason="login_csrf")
            return self.refused(request, "The login form expired or did not come from this console: reload it.")
        if not self.access.token_matches(form.get("token")):
            log.warning("ops.unauthorized", path=request.url.path, reason="bad_token")
            await self.guesses.wait_turn()  # shared with the bearer routes: service.web.guessing
            return await self.login_form(request, error="That is not the ops token.", status=401)
        log.info("ops.console_login")
        response = RedirectResponse(safe_next(form.get("next")), 303)
        session = self.access.new_session()
        response.headers.append("set-cookie", self.access.cookie(SESSION_COOKIE, session, SESSION_SECONDS))
        response.headers.append("set-cookie", self.access.cookie(LOGIN_COOKIE, "", 0))
        return response

    async def logout(self, request: Request) -> Response:
        # Ended on the server, not only in this browser: a copy of the cookie opens nothing now.
        session = request.cookies[SESSION_COOKIE]  # page() let only a valid session through
        await self.revoked.revoke(self.access.nonce_of(session), self.access.remaining_ms(session))
        log.info("ops.console_logout")
        response = RedirectResponse(f"{BASE}/login", 303)
        response.headers.append("set-cookie", self.access.cookie(SESSION_COOKIE, "", 0))
        return response

    # --- overview -----------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        state = await activity.service_state(self.redis)
        last, running = await self.reconciles.last(), await self.reconciles.current()
        series = await activity.last_hour(self.redis)
        health = await delivery_health.snapshot(self.redis, self.silence_ms)
        context = {
            "nav": "overview",
            "health": health,
            "gaps": await self.gaps.list(GAPS_SHOWN),
            "state": state,
            "reconcile_last": last,
            "reconcile_running": running,
            "chart": chart.draw(series),
            "refresh": True,
        }
        return self.render(request, "overview.html", context)

    # --- companies ----------------------------------------------------------------------------

    async def _states(self, connection_ids: list[str]) -> list[dict[str, Any]]:
        found = await asyncio.gather(*(self.connections.get(c) for c in connection_ids))
        return [s for s in found if s is not None]

    async def companies(self, request: Request) -> Response:
        query = request.query_params.get("q", "").strip()
        found = await self.history.search_companies(query, COMPANIES_SHOWN + 1)
        shown = found[:COMPANIES_SHOWN]
        ids = await asyncio.gather(*(self.history.connections_of(c["companyId"]) for c in shown))
        states = await asyncio.gather(*(self._states(list(i)) for i in ids))
        rows = []
        for company, connections in zip(shown, states, strict=True):
            counts = Counter(s.get("status") or "unknown" for s in connections)
            rows.append({**company, "connections": len(connections), "counts": dict(sorted(counts.items()))})
        statuses = sorted({status for row in rows for status in row["counts"]})
        context = {"nav": "companies", "q": query, "rows": rows, "statuses": statuses, "more": len(found) > len(shown)}
        return self.render(request, "companies.html", context)

    async def company(self, request: Request) -> Response:
        company_id = request.path_params.get("company_id") or request.query_params.get("id", "")
        page = _page_number(request.query_params.get("page"))
        name = await self.history.company_name(company_id)
        all_ids = await self.history.connections_of(company_id)
        pages = max(1, -(-len(all_ids) // CONNECTIONS_PER_PAGE))
        page = min(page, pages)
        # One page of connections, each with its history: a company with 500 connections costs
        # what one with 20 does, and the page says how many there are.
        connection_ids = all_ids[(page - 1) * CONNECTIONS_PER_PAGE : page * CONNECTIONS_PER_PAGE]
        states = {s["connectionId"]: s for s in await self._states(connection_ids)}
        histories = await asyncio.gather(*(self.history.connection_history(c) for c in connection_ids))
        syncs = await self.syncs.get(company_id)
        letters, letters_total = await self.letters.for_company(company_id, COMPANY_LETTERS_SHOWN)
        lifecycle = await self.lifecycle.recent(20, company_id=company_id)
        connections = []
        for connection_id, history in zip(connection_ids, histories, strict=True):
            current = states.get(connection_id) or {"connectionId": connection_id}
            claimed_at = None
            if current.get("initialSync") == "claimed":
                claimed_at = await self.connections.claimed_at(connection_id)
            applied = next((h for h in history if h.get("outcome") == "applied"), None)
            connections.append(
                {
                    **current,
                    "source": current.get("lastEventType"),
                    "askedCodat": bool(applied and applied.get("authoritative")),
                    "claimedAt": claimed_at,
                    "history": history,
                }
            )
        known = bool(name or all_ids or syncs or letters_total)
        context = {
            "nav": "companies",
            "company_id": company_id,
            "self_href": company_href(company_id),
            "name": name,
            "connections": connections,
            "connections_total": len(all_ids),
            "page": page,
            "pages": pages,
            "first_shown": (page - 1) * CONNECTIONS_PER_PAGE + 1,
            "syncs": dict(sorted(syncs.items())),
            "letters": letters,
            "letters_total": letters_total,
            "lifecycle": lifecycle,
            "known": known,
        }
        return self.render(request, "company.html", context, 200 if known else 404)

    # --- one delivery -------------------------------------------------------------------------

    async def delivery(self, request: Request) -> Response:
        given = request.query_params.get("id", "").strip()
        context: dict[str, Any] = {"nav": "deliveries", "webhook_id": given, "given": given, "trace": None}
        if not given:
            return self.render(request, "delivery.html", context)
        webhook_id, candidates, partial = await self._resolve_webhook(given)
        context.update(webhook_id=webhook_id, candidates=candidates, partial=partial)
        trace = await self.history.delivery(webhook_id)
        flight = await activity.delivery_in_flight(self.redis, webhook_id)
        letters = await self.letters.for_webhook(webhook_id, DELIVERY_LETTERS_SHOWN)
        changes: list[dict[str, Any]] = []
        connection_state = None
        if trace and trace.get("connectionId"):
            history = await self.history.connection_history(trace["connectionId"])
            changes = [h for h in history if h.get("webhookId") == webhook_id]
            connection_state = await self.connections.get(trace["connectionId"])
        known = bool(trace or flight["seen"] or flight["job"] or letters)
        context.update(
            trace=trace,
            flight=flight,
            letters=letters,
            changes=changes,
            connection_state=connection_state,
            known=known,
        )
        return self.render(request, "delivery.html", context, 200 if known else 404)

    async def _resolve_webhook(self, given: str) -> tuple[str, list[str], bool]:
        """The webhook id `given` names: itself when the service knows it, else the one id it is
        a unique prefix of (the console log prints ids cut to 8 characters). Also the ids it is
        a prefix of, when there are several, and whether the search stopped before the end.

        Dead letters are found through their index (a lexical range, no scan); delivery traces
        by a SCAN of their keys, bounded to PREFIX_SCAN_CALLS calls: on a Redis with millions of
        keys the page says when it did not look everywhere."""
        if await self.redis.exists(keys.delivery_trace(given), keys.seen(given)):
            return given, [], False
        if len(given) < MIN_PREFIX:
            return given, [], False
        found = await self.letters.webhook_ids(given, PREFIX_MATCHES)
        name = keys.delivery_trace("")
        cursor, calls = 0, 0
        while len(found) < PREFIX_MATCHES and calls < PREFIX_SCAN_CALLS:
            cursor, names = await self.redis.scan(
                cursor, match=name + glob_literal(given) + "*", count=PREFIX_SCAN_COUNT
            )
            calls += 1
            for key in names:
                webhook_id = key.decode().removeprefix(name)
                if webhook_id not in found:
                    found.append(webhook_id)
            if cursor == 0:
                break
        partial = cursor != 0
        if len(found) == 1 and not partial:
            return found[0], [], False
        return given, found[:PREFIX_MATCHES], partial

    # --- dead letters -------------------------------------------------------------------------

    async def _matching(self, request: Request) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str, str]:
        reason = request.query_params.get("reason", "")
        event_type = request.query_params.get("type", "")
        letters = await self.letters.list(LETTERS_SHOWN)
        matching = [
            letter
            for letter in letters
            if (not reason or letter.get("reason") == reason)
            and (not event_type or (letter.get("event") or {}).get("event_type") == event_type)
        ]
        return letters, matching, reason, event_type

    async def dead_letters(self, request: Request) -> Response:
        letters, matching, reason, event_type = await self._matching(request)
        context = {
            "nav": "dead-letters",
            "letters": matching,
            "total": await self.letters.count(),
            "read": len(letters),
            "limit": LETTERS_SHOWN,
            "reasons": sorted({str(letter.get("reason")) for letter in letters}),
            "types": sorted({str((letter.get("event") or {}).get("event_type")) for letter in letters}),
            "reason": reason,
            "type": event_type,
            "replayed": request.query_params.get("replayed", ""),
            "gone": request.query_params.get("gone", ""),
        }
        return self.render(request, "dead_letters.html", context)

    async def dead_letter(self, request: Request) -> Response:
        letter = await self.letters.get(request.path_params["letter_id"])
        status = 200 if letter else 404
        return self.render(request, "dead_letter.html", {"nav": "dead-letters", "letter": letter}, status)

    async def confirm_replay(self, request: Request) -> Response:
        letter = await self.letters.get(request.path_params["letter_id"])
        status = 200 if letter else 404
        context = {"nav": "dead-letters", "letters": [letter] if letter else [], "single": True, "filters": {}}
        return self.render(request, "confirm_replay.html", context, status)

    async def replay(self, request: Request) -> Response:
        letter_id = request.path_params["letter_id"]
        job_id = await self.letters.replay(letter_id)
        if job_id is not None:
            log.info("dead_letter.replayed", dead_letter_id=letter_id, job_id=job_id, via="console")
        done = {"replayed": 1} if job_id else {"gone": 1}
        return RedirectResponse(f"{BASE}/dead-letters?{urlencode(done)}", 303)

    async def confirm_replay_all(self, request: Request) -> Response:
        _, matching, reason, event_type = await self._matching(request)
        context = {
            "nav": "dead-letters",
            "letters": matching,
            "single": False,
            "filters": {"reason": reason, "type": event_type},
        }
        return self.render(request, "confirm_replay.html", context)

    async def replay_all(self, request: Request) -> Response:
        form: Form = request.state.form
        replayed = gone = 0
        # Exactly the letters the confirmation listed: one that failed since is not swept along.
        for letter_id in dict.fromkeys(form.getlist("id")):
            job_id = await self.letters.replay(letter_id)
            if job_id is None:
                gone += 1
                continue
            replayed += 1
            log.info("dead_letter.replayed", dead_letter_id=letter_id, job_id=job_id, via="console")
        filters = {"reason": form.get("reason"), "type": form.get("type")}
        query = urlencode({**{k: v for k, v in filters.items() if v}, "replayed": replayed, "gone": gone})
        return RedirectResponse(f"{BASE}/dead-letters?{query}", 303)
