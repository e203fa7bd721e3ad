"""One JSON object a line on stdout, from our code and from the libraries (uvicorn, arq) alike.

The pipeline, in order: context bound for the delivery or job (contextvars), level, timestamp,
redaction, exception rendering, then orjson. Redaction sits before every renderer, so nothing
reaches stdout without passing it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from typing import Any

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


class Redact:
    """Masks sensitive keys, and any configured secret wherever it appears inside a string."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Very short values would mask ordinary words; real secrets are long.
        self._secrets = tuple(s for s in secrets if s and len(s) >= 8)

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        for key in SENSITIVE_KEYS.intersection(event_dict):
            event_dict[key] = REDACTED
        for key, value in event_dict.items():
            if isinstance(value, str):
                for secret in self._secrets:
                    if secret in value:
                        event_dict[key] = value = value.replace(secret, REDACTED)
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
    structlog.get_logger("service").critical("process.crashed", exc_info=(kind, error, traceback))


def refuse(reason: str) -> None:
    """The one line a process prints when it will not start: JSON unless LOG_FORMAT=console,
    so that even this line is one a log pipeline can parse."""
    if os.environ.get("LOG_FORMAT", "json").lower() == "console":
        print(f"codat-webhooks: {reason}", file=sys.stderr)
    else:
        print(
            _orjson_text({"event": "process.refused_to_start", "level": "critical", "reason": reason}), file=sys.stderr
        )
