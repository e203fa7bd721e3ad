"""The console's access: OPS_TOKEN opens a session, kept in a signed cookie; every form that
changes something carries a CSRF token bound to that session.

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
  second lock, and the one that does not depend on the browser.
- The login form has its own: GET sets a short-lived nonce cookie, the form carries
  HMAC(key, "login." + nonce), so a login cannot be forged from another site either.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

SESSION_COOKIE = "ops_console"
LOGIN_COOKIE = "ops_console_login"
COOKIE_PATH = "/ops/console"
SESSION_SECONDS = 12 * 3600
LOGIN_SECONDS = 3600


class Access:
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
