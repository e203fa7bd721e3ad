"""What every console page goes through: the guard in front of it and the rendering after it.
The pages themselves, by area: overview, companies, deliveries, dead_letters, and session (login
and logout). Each reads the stores the workers write (service.web.deps) and renders a template;
none writes anything but a dead letter's replay, behind a session and a CSRF token.

Who may see a page is decided by the one authentication layer of /ops (service.web.auth); what a
refusal looks like here is a page (or, for a GET without a session, the login). Redis away: the
page says so (503), never a 500. Lists say what they leave out."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import structlog
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from service.web.auth import SESSION_COOKIE, OpsAuth, same_origin
from service.web.console.filters import BASE, environment
from service.web.console.forms import TooLarge, read_form
from service.web.deps import WebDeps

log = structlog.get_logger(__name__)

Handler = Callable[[Request], Awaitable[Response]]


class Console:
    def __init__(self, deps: WebDeps, auth: OpsAuth) -> None:
        self.deps = deps
        self.auth = auth
        self.access = auth.access
        self.templates = Jinja2Templates(env=environment(deps.settings.credentials()))

    def render(self, request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
        session = request.cookies.get(SESSION_COOKIE)
        logged_in = self.access.session_valid(session)
        csrf = self.access.csrf_token(session) if logged_in and session else ""
        return self.templates.TemplateResponse(
            request, name, {"csrf": csrf, "logged_in": logged_in, "nav": "", **context}, status_code=status
        )

    def refused(self, request: Request, why: str, status: int = 403) -> Response:
        return self.render(request, "refused.html", {"why": why}, status)

    def page(self, handler: Handler, *, public: bool = False) -> Handler:
        """Origin, session (and, for a POST, its CSRF token) first; Redis away: a 503 page, not a
        500. A POST's form, once checked, is the handler's as `request.state.form`."""

        async def endpoint(request: Request) -> Response:
            try:
                if request.method == "POST" and not same_origin(request):
                    log.warning("ops.unauthorized", path=request.url.path, reason="origin")
                    return self.refused(request, "This form was posted from another site: nothing was done.")
                if not public:
                    session = await self.auth.session(request)
                    if session is None:
                        if request.method == "GET":
                            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                            return RedirectResponse(f"{BASE}/login?{urlencode({'next': target})}", 303)
                        log.warning("ops.unauthorized", path=request.url.path, reason="no_session")
                        return self.refused(request, "You are not logged in (or the session ran out).", 401)
                    if request.method == "POST":
                        form = await read_form(request)
                        if not self.access.csrf_valid(session, form.get("csrf")):
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
