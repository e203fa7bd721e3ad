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

    def text(self, value: str) -> str:
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
        for key in SENSITIVE_KEYS.intersection(event_dict):
            event_dict[key] = REDACTED
        for key, value in event_dict.items():
            if isinstance(value, str):
                event_dict[key] = self._masker.text(value)
        return event_dict


def _orjson_bytes(obj: Any, **_: Any) -> bytes:
    return orjson.dumps(obj, default=str)


def _orjson_text(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def configure(level: str = "info", fmt: str = "json", secrets: Iterable[str] = ()) -> None:
    redact = Redact(secrets)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
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
    structlog.configure(
        processors=[*shared, *tail, renderer],
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
    """At a terminal, our own lines tell what happened. arq's per-job lines (`→ job(...)`, `←`),
    its health-check records and uvicorn's startup chatter repeat it; they stay at debug, and in
    the JSON lines, where a pipeline filters rather than a person reads."""
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
