"""Dead letters: the list (filtered by reason and event type), one letter, and the replays, each
confirmed on a page of its own first; a replay is the console's only write."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import structlog
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from service.web.console.filters import BASE
from service.web.console.forms import Form
from service.web.console.views import Console

log = structlog.get_logger(__name__)

LETTERS_SHOWN = 1000  # dead letters read per page (newest first); the count says how many there are


def routes(console: Console) -> list[Route]:
    letters_store = console.deps.dead_letters

    async def matching(request: Request) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str, str]:
        reason = request.query_params.get("reason", "")
        event_type = request.query_params.get("type", "")
        letters = await letters_store.list(LETTERS_SHOWN)
        found = [
            letter
            for letter in letters
            if (not reason or letter.get("reason") == reason)
            and (not event_type or (letter.get("event") or {}).get("event_type") == event_type)
        ]
        return letters, found, reason, event_type

    async def dead_letters(request: Request) -> Response:
        letters, found, reason, event_type = await matching(request)
        context = {
            "nav": "dead-letters",
            "letters": found,
            "total": await letters_store.count(),
            "read": len(letters),
            "limit": LETTERS_SHOWN,
            "reasons": sorted({str(letter.get("reason")) for letter in letters}),
            "types": sorted({str((letter.get("event") or {}).get("event_type")) for letter in letters}),
            "reason": reason,
            "type": event_type,
            "replayed": request.query_params.get("replayed", ""),
            "gone": request.query_params.get("gone", ""),
        }
        return console.render(request, "dead_letters.html", context)

    async def dead_letter(request: Request) -> Response:
        letter = await letters_store.get(request.path_params["letter_id"])
        status = 200 if letter else 404
        return console.render(request, "dead_letter.html", {"nav": "dead-letters", "letter": letter}, status)

    async def confirm_replay(request: Request) -> Response:
        letter = await letters_store.get(request.path_params["letter_id"])
        status = 200 if letter else 404
        context = {"nav": "dead-letters", "letters": [letter] if letter else [], "single": True, "filters": {}}
        return console.render(request, "confirm_replay.html", context, status)

    async def replay(request: Request) -> Response:
        letter_id = request.path_params["letter_id"]
        job_id = await letters_store.replay(letter_id)
        if job_id is not None:
            log.info("dead_letter.replayed", dead_letter_id=letter_id, job_id=job_id, via="console")
        done = {"replayed": 1} if job_id else {"gone": 1}
        return RedirectResponse(f"{BASE}/dead-letters?{urlencode(done)}", 303)

    async def confirm_replay_all(request: Request) -> Response:
        _, found, reason, event_type = await matching(request)
        context = {
            "nav": "dead-letters",
            "letters": found,
            "single": False,
            "filters": {"reason": reason, "type": event_type},
        }
        return console.render(request, "confirm_replay.html", context)

    async def replay_all(request: Request) -> Response:
        form: Form = request.state.form
        replayed = gone = 0
        # Exactly the letters the confirmation listed: one that failed since is not swept along.
        for letter_id in dict.fromkeys(form.getlist("id")):
            job_id = await letters_store.replay(letter_id)
            if job_id is None:
                gone += 1
                continue
            replayed += 1
            log.info("dead_letter.replayed", dead_letter_id=letter_id, job_id=job_id, via="console")
        filters = {"reason": form.get("reason"), "type": form.get("type")}
        query = urlencode({**{k: v for k, v in filters.items() if v}, "replayed": replayed, "gone": gone})
        return RedirectResponse(f"{BASE}/dead-letters?{query}", 303)

    page = console.page
    return [
        Route("/dead-letters", page(dead_letters), methods=["GET"]),
        Route("/dead-letters/replay", page(confirm_replay_all), methods=["GET"]),
        Route("/dead-letters/replay", page(replay_all), methods=["POST"]),
        Route("/dead-letters/{letter_id}", page(dead_letter), methods=["GET"]),
        Route("/dead-letters/{letter_id}/replay", page(confirm_replay), methods=["GET"]),
        Route("/dead-letters/{letter_id}/replay", page(replay), methods=["POST"]),
    ]
