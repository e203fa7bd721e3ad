"""The console's login and logout: OPS_TOKEN typed into a form opens a session (service.web.auth
decides, and paces wrong tokens with the /ops bearer routes); logging out ends it on the server."""

from __future__ import annotations

import structlog
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from service.web.auth import LOGIN_COOKIE, LOGIN_SECONDS, SESSION_COOKIE, SESSION_SECONDS
from service.web.console.filters import BASE
from service.web.console.forms import read_form
from service.web.console.views import Console

log = structlog.get_logger(__name__)


def safe_next(value: str | None) -> str:
    """Where to go after the login: only a console path, never another site."""
    if value and value.startswith(BASE + "/") and "//" not in value and "\\" not in value:
        return value
    return BASE + "/"


def routes(console: Console) -> list[Route]:
    access = console.access

    async def login_form(request: Request, error: str = "", status: int = 200) -> Response:
        target = safe_next(request.query_params.get("next"))
        if error == "" and await console.auth.session(request) is not None:
            return RedirectResponse(target, 303)
        nonce = request.cookies.get(LOGIN_COOKIE) or access.new_login_nonce()
        response = console.render(
            request,
            "login.html",
            {"login_csrf": access.login_csrf(nonce), "next": target, "error": error, "logged_in": False},
            status,
        )
        response.headers.append("set-cookie", access.cookie(LOGIN_COOKIE, nonce, LOGIN_SECONDS))
        return response

    async def login(request: Request) -> Response:
        form = await read_form(request)
        if not access.login_csrf_valid(request.cookies.get(LOGIN_COOKIE), form.get("csrf")):
            log.warning("ops.unauthorized", path=request.url.path, reason="login_csrf")
            return console.refused(request, "The login form expired or did not come from this console: reload it.")
        if not await console.auth.token(request, form.get("token")):  # logged, and answered at its turn
            return await login_form(request, error="That is not the ops token.", status=401)
        log.info("ops.console_login")
        response = RedirectResponse(safe_next(form.get("next")), 303)
        session = access.new_session()
        response.headers.append("set-cookie", access.cookie(SESSION_COOKIE, session, SESSION_SECONDS))
        response.headers.append("set-cookie", access.cookie(LOGIN_COOKIE, "", 0))
        return response

    async def logout(request: Request) -> Response:
        await console.auth.end_session(request.cookies[SESSION_COOKIE])  # page() let only an open one through
        log.info("ops.console_logout")
        response = RedirectResponse(f"{BASE}/login", 303)
        response.headers.append("set-cookie", access.cookie(SESSION_COOKIE, "", 0))
        return response

    page = console.page
    return [
        Route("/login", page(login_form, public=True), methods=["GET"]),
        Route("/login", page(login, public=True), methods=["POST"]),
        Route("/logout", page(logout), methods=["POST"]),
    ]
