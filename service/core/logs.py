"""One JSON object a line on stdout, from our code and from the libraries (uvicorn, arq) alike.

The pipeline, in order: context bound for the delivery or job (contextvars), level, timestamp,
redaction, exception rendering, then orjson. Redaction sits before every renderer, so nothing
reaches stdout without passing it.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import sys
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED = "[redacted]"
# Keys whose value is a credential whatever it holds (log keys are lower case by convention).
SENSITIVE_KEYS = frozenset(
    {
        "authorization",
        "secret",
        "secrets",
        "webhook_secret",
        "webhook_secrets",
        "api_key",
        "codat_api_key",
        "token",
        "ops_token",
        "password",
        "webhook_auth",
    }
)


# Very short values would mask ordinary words; real secrets are long.
MIN_MASKED_CHARS = 8
# A cut-off credential at the end of a text (Codat's error bodies are kept to 200 characters)
# still gives away its first characters: a tail this long that begins a credential is masked.
MIN_MASKED_TAIL = 4
# Whatever follows an HTTP auth scheme is a credential, known to this process or not (an API that
# echoes the request's Authorization header, a legacy sender's token).
_AUTH_SCHEME = re.compile(r"(?i)\b(basic|bearer)(\s+|%20|\+)[A-Za-z0-9+/=._~%-]{4,}")
_SCHEME_NAME = re.compile(r"(?i)basic|bearer")  # what _AUTH_SCHEME needs to match at all


def credential_forms(secrets: Iterable[str]) -> tuple[str, ...]:
    """Each secret and the encodings it travels in: a webhook secret without its whsec_ prefix,
    base64 (standard and URL-safe, padded or not, of the value alone and as a Basic header's
    `user:` pair) and percent-encoding. Longest first, so that a form inside a longer one is never
    masked piecemeal."""
    forms: set[str] = set()
    for secret in secrets:
        if not secret or len(secret) < MIN_MASKED_CHARS:
            continue
        forms.update((secret, quote(secret, safe="")))
        if secret.startswith("whsec_") and len(secret) - 6 >= MIN_MASKED_CHARS:
            forms.add(secret.removeprefix("whsec_"))  # a signing secret's key, without its prefix
        for raw in (secret.encode(), f"{secret}:".encode()):
            for encoded in (base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()):
                forms.update((encoded, encoded.rstrip("=")))
    return tuple(sorted(forms, key=lambda form: (-len(form), form)))


class Masker:
    """Masks credentials in text, and in every string inside a JSON-like value.

    One instance per process, built from Settings.credentials(): the log pipeline, the dead
    letters (before a letter is written, and again as it is read) and every /ops answer and
    console page use it, so what one masks the others mask too."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.forms = credential_forms(secrets)
        # Every step of text() needs one of these in the value: a form's first MIN_MASKED_TAIL
        # characters (a whole form begins with them, and so does a cut-off one) or an auth
        # scheme's name. Looking for them first lets the ordinary value (every string of every
        # log line) through at the cost of a few substring searches, where the steps cost a loop
        # over the forms each.
        self._heads = tuple(sorted({form[:MIN_MASKED_TAIL] for form in self.forms}))

    def _may_hold(self, text: str) -> bool:
        for head in self._heads:
            if head in text:
                return True
        lowered = text.lower()
        if "basic" in lowered or "bearer" in lowered:
            return True
        # Beyond ASCII, the scheme's case-blind match also takes e.g. U+017F (long s) for "s":
        # ask the regex.
        return not text.isascii() and _SCHEME_NAME.search(text) is not None

    def may_hold(self, texts: Iterable[str]) -> bool:
        """False when text() would leave every one of `texts` as it is. One look over them all:
        joined, what is inside one is still found; what spans two costs a text() call each."""
        return self._may_hold("\x00".join(texts))

    def text(self, value: str) -> str:
        if not self._may_hold(value):
            return value
        for form in self.forms:
            if form in value:
                value = value.replace(form, REDACTED)
        value = _AUTH_SCHEME.sub(lambda match: f"{match.group(1)} {REDACTED}", value)
        return self._cut_tail(value)

    def _cut_tail(self, value: str) -> str:
        for form in self.forms:
            start = max(0, len(value) - len(form) + 1)
            at = value.find(form[:MIN_MASKED_TAIL], start)
            while at != -1:  # rarely more than one pass: a credential's first characters, near the end
                if form.startswith(value[at:]):
                    return value[:at] + REDACTED
                at = value.find(form[:MIN_MASKED_TAIL], at + 1)
        return value

    def value(self, value: Any) -> Any:
        """A copy of a JSON-like value (dicts, lists, strings, scalars) with every string masked,
        keys included."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.value(k) if isinstance(k, str) else k: self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(item) for item in value]
        return value


class Redact:
    """Masks sensitive keys, and any configured secret wherever it appears inside a string."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._masker = Masker(secrets)

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        if not SENSITIVE_KEYS.isdisjoint(event_dict):  # the usual line: no set built
            for key in SENSITIVE_KEYS.intersection(event_dict):
                event_dict[key] = REDACTED
        # Every line passes here: the usual one, with nothing to mask, costs one search.
        if self._masker.may_hold([value for value in event_dict.values() if isinstance(value, str)]):
            for key, value in event_dict.items():
                if isinstance(value, str):
                    event_dict[key] = self._masker.text(value)
        return event_dict


class UtcTimestamp:
    """structlog's TimeStamper(fmt="iso", utc=True) to the character ("2026-12-05T02:40:01.123456Z",
    and no fraction when the microseconds are 0, as datetime.isoformat writes it), for less than
    half its cost: the date and time of day are formatted once a second, not once a line. Both
    floor the system clock to the microsecond."""

    def __init__(self) -> None:
        self._second: tuple[int, str] = (-1, "")  # one attribute: a thread never sees half of it

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        second, micro = divmod(time.time_ns() // 1000, 1_000_000)
        cached = self._second
        if cached[0] != second:
            cached = self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        event_dict["timestamp"] = f"{cached[1]}.{micro:06d}Z" if micro else cached[1] + "Z"
        return event_dict


class JsonLine:
    """Our own JSON lines' pipeline, `shared` then `tail` then orjson, run as one processor.

    The steps and their order are those of the list it is given, which the standard library's
    lines take one by one; here their calls are made directly, and dict_tracebacks (the one
    step of `tail`) only when the line carries exc_info, the one case where it does anything."""

    def __init__(self, shared: list[Processor], tail: list[Processor]) -> None:
        merge, level, stamp, redact = shared
        (tracebacks,) = tail
        self._steps = (merge, level, stamp, redact)
        self._tracebacks = tracebacks

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> bytes:
        for step in self._steps:
            event_dict = step(logger, method, event_dict)
        if "exc_info" in event_dict:
            event_dict = self._tracebacks(logger, method, event_dict)
        return orjson.dumps(event_dict, default=str)


def _orjson_bytes(obj: Any, **_: Any) -> bytes:
    return orjson.dumps(obj, default=str)


def _orjson_text(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def configure(level: str = "info", fmt: str = "json", secrets: Iterable[str] = ()) -> None:
    redact = Redact(secrets)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        UtcTimestamp(),
        redact,
    ]
    if fmt == "json":
        tail: list[Processor] = [structlog.processors.dict_tracebacks]
        # Our lines go out as orjson's bytes, undecoded; the stdlib handler needs text.
        renderer: Processor = structlog.processors.JSONRenderer(serializer=_orjson_bytes)
        text_renderer: Processor = structlog.processors.JSONRenderer(serializer=_orjson_text)
        factory: Any = structlog.BytesLoggerFactory(sys.stdout.buffer)
    else:
        from service.core.consolelog import ConsoleLine

        tail = [structlog.processors.format_exc_info]
        renderer = text_renderer = ConsoleLine()
        factory = structlog.PrintLoggerFactory(sys.stdout)
    own: list[Processor] = [*shared, *tail, renderer]
    if fmt == "json":
        own = [JsonLine(shared, tail)]  # the same steps, called as one: every delivery logs a line
    structlog.configure(
        processors=own,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # The libraries log through the standard library: route them through the same steps.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared, *tail],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, text_renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "arq", "arq.worker"):
        library = logging.getLogger(name)
        library.handlers[:] = []
        library.propagate = True
    # httpx logs every request at info: the worker's own lines already say what it called.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if fmt == "console" and level.lower() != "debug":
        _quiet_libraries_for_people()
    # Warnings and a crash's traceback would otherwise go to stderr as plain text.
    logging.captureWarnings(True)
    sys.excepthook = _log_crash


class _OnlyWhereItListens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.getMessage().startswith("Uvicorn running on")


def _quiet_libraries_for_people() -> None:
    """At a terminal, our own lines tell what happened. arq's health-check records and uvicorn's
    startup chatter repeat it; they stay at debug, and in the JSON lines, where a pipeline filters
    rather than a person reads. (arq's per-job lines, `→ job(...)` and `←`, are dropped in every
    format: workers.worker.)"""
    for name in ("arq.worker", "arq.jobs", "arq.connections"):
        logging.getLogger(name).setLevel(logging.WARNING)
    uvicorn = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _OnlyWhereItListens) for f in uvicorn.filters):
        uvicorn.addFilter(_OnlyWhereItListens())


def _log_crash(kind: type[BaseException], error: BaseException, traceback: Any) -> None:
    structlog.get_logger(__name__).critical("process.crashed", exc_info=(kind, error, traceback))


def refuse(reason: str) -> None:
    """The one line a process prints when it will not start: JSON unless LOG_FORMAT=console,
    so that even this line is one a log pipeline can parse."""
    if os.environ.get("LOG_FORMAT", "json").lower() == "console":
        print(f"codat-webhooks: {reason}", file=sys.stderr)
    else:
        print(
            _orjson_text({"event": "process.refused_to_start", "level": "critical", "reason": reason}), file=sys.stderr
        )
