"""Who may use /ops: the one authentication layer of the JSON routes (service.web.ops) and the
console (service.web.console), built once per web process (service.web.deps) and handed to both.

One secret, OPS_TOKEN, two ways to show it:

- **the bearer header** (`Authorization: Bearer $OPS_TOKEN`), on every JSON route;
- **a console session**, opened by typing the token into the console's login form and kept in
  a signed cookie.

Both compare in constant time, and both answer a wrong token at the one pace of wrong guesses
(service.web.guessing), logged as `ops.unauthorized`. What a refusal looks like stays each
surface's own (a JSON 401 with `WWW-Authenticate: Bearer`; a console page or a redirect to the
login), and so does the answer while Redis is away: the decision is made here.

The session lives in the cookie, so every web replica accepts the session of any other (they
share OPS_TOKEN) and a restart logs nobody out. The cookie holds no secret: it is
`v1.<issued ms>.<nonce>.<HMAC>` under a key derived from OPS_TOKEN, valid for SESSION_SECONDS.
Changing OPS_TOKEN ends every session at once. Logging out ends the session on the server: its
nonce is written to Redis (service.stores.sessions) until the session would have run out, so a
copy of the cookie taken before the logout opens nothing after it.

- Session cookie: HttpOnly, SameSite=Strict, Path=/ops/console, Secure unless in dev mode
  (Settings.ops_cookie_secure).
- CSRF: a hidden `csrf` field, HMAC(key, "csrf." + session cookie), compared in constant time.
  SameSite=Strict already keeps another site's form from sending the cookie; the token is the
  second lock, and the one that does not depend on the browser. Before both, a POST whose Origin
  (or Referer) names another host is refused (`same_origin`).
- The login form has its own: GET sets a short-lived nonce cookie, the form carries
  HMAC(key, "login." + nonce), so a login cannot be forged from another site either.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from urllib.parse import urlsplit

import structlog
from starlette.requests import Request

from service.stores.sessions import RevokedSessions
from service.web.guessing import WrongGuesses

log = structlog.get_logger(__name__)

SESSION_COOKIE = "ops_console"
LOGIN_COOKIE = "ops_console_login"
COOKIE_PATH = "/ops/console"
SESSION_SECONDS = 12 * 3600
LOGIN_SECONDS = 3600


class Access:
    """The signing side of the console's cookies and forms: no I/O, no clock but the one given."""

    def __init__(self, ops_token: str, *, secure: bool) -> None:
        self._token = ops_token.encode()
        self._key = hmac.new(self._token, b"codat-webhooks ops console v1", hashlib.sha256).digest()
        self.secure = secure

    def _mac(self, purpose: str, value: str) -> str:
        return hmac.new(self._key, f"{purpose}.{value}".encode(), hashlib.sha256).hexdigest()

    def token_matches(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self._token)

    # --- the session ---------------------------------------------------------------------------

    def new_session(self, now: float | None = None) -> str:
        body = f"v1.{int((time.time() if now is None else now) * 1000)}.{secrets.token_hex(16)}"
        return f"{body}.{self._mac('session', body)}"

    def session_valid(self, cookie: str | None, now: float | None = None) -> bool:
        if not cookie or cookie.count(".") != 3:
            return False
        body, _, mac = cookie.rpartition(".")
        if not hmac.compare_digest(mac.encode(), self._mac("session", body).encode()):
            return False
        issued = body.split(".")[1]
        if not issued.isdigit():
            return False
        age = (time.time() if now is None else now) - int(issued) / 1000
        return -60 <= age <= SESSION_SECONDS

    @staticmethod
    def nonce_of(cookie: str) -> str:
        """The session's own id (a valid cookie's third part)."""
        return cookie.split(".")[2]

    @staticmethod
    def remaining_ms(cookie: str, now: float | None = None) -> int:
        """How long a valid session cookie has left to run."""
        issued = int(cookie.split(".")[1])
        return issued + SESSION_SECONDS * 1000 - int((time.time() if now is None else now) * 1000)

    def csrf_token(self, session: str) -> str:
        return self._mac("csrf", session)

    def csrf_valid(self, session: str | None, given: str | None) -> bool:
        if not session or not given:
            return False
        return hmac.compare_digest(given.encode(), self.csrf_token(session).encode())

    # --- the login form's own token ------------------------------------------------------------

    @staticmethod
    def new_login_nonce() -> str:
        return secrets.token_hex(16)

    def login_csrf(self, nonce: str) -> str:
        return self._mac("login", nonce)

    def login_csrf_valid(self, nonce: str | None, given: str | None) -> bool:
        if not nonce or not given:
            return False
        return hmac.compare_digest(given.encode(), self.login_csrf(nonce).encode())

    # --- cookies -------------------------------------------------------------------------------

    def cookie(self, name: str, value: str, max_age: int) -> str:
        """A Set-Cookie value: HttpOnly, SameSite=Strict, scoped to the console."""
        parts = [f"{name}={value}", f"Path={COOKIE_PATH}", f"Max-Age={max_age}", "HttpOnly", "SameSite=Strict"]
        if self.secure:
            parts.append("Secure")
        return "; ".join(parts)


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


class OpsAuth:
    """The decisions: is this the operator, by bearer header, by the login form's token, or by an
    open console session? A wrong token is logged and answered only at its turn."""

    def __init__(self, ops_token: str, *, secure: bool, revoked: RevokedSessions, guesses: WrongGuesses) -> None:
        self.access = Access(ops_token, secure=secure)
        self.guesses = guesses  # one pace for wrong tokens, bearer and console login alike
        self._revoked = revoked
        self._bearer = f"Bearer {ops_token}".encode()

    async def bearer(self, request: Request) -> bool:
        """The JSON routes' credential: `Authorization: Bearer $OPS_TOKEN`."""
        given = request.headers.get("authorization", "").encode("latin-1")
        if hmac.compare_digest(given, self._bearer):
            return True
        log.warning("ops.unauthorized", path=request.url.path)
        await self.guesses.wait_turn()
        return False

    async def token(self, request: Request, given: str) -> bool:
        """The console login form's credential: the token itself."""
        if self.access.token_matches(given):
            return True
        log.warning("ops.unauthorized", path=request.url.path, reason="bad_token")
        await self.guesses.wait_turn()
        return False

    async def session_open(self, session: str | None) -> bool:
        """Signed, not run out, and not ended by a logout (the last asks Redis)."""
        if not session or not self.access.session_valid(session):
            return False
        return not await self._revoked.revoked(self.access.nonce_of(session))

    async def session(self, request: Request) -> str | None:
        """The request's console session cookie, if it is an open session."""
        cookie = request.cookies.get(SESSION_COOKIE)
        return cookie if await self.session_open(cookie) else None

    async def end_session(self, session: str) -> None:
        """Ended on the server, not only in this browser: a copy of the cookie opens nothing now."""
        await self._revoked.revoke(self.access.nonce_of(session), self.access.remaining_ms(session))
