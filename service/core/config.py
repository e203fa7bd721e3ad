"""Settings, read once from the environment, each declared once.

Every setting is one `declare(...)` below, on the `Settings` field it loads: its environment name,
how it is read (its type), its default, its bounds, the process that needs it, and one line of
help. The loader (`Settings.from_env`) and its refusals, the command-line tool's "reads:" lines
(service.cli), `codat-webhooks status` (service.status) and the table in docs/configuration.md
(`python -m service.core.config --write docs/configuration.md`) all come from these declarations;
tests/test_settings_declared_once.py holds the docs to them. The few variables a process reads
without loading them into `Settings` (HOST, the dev stack's own) are declared in `ELSEWHERE`.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

# Codat retries a failed delivery for 28 hours, and its Portal replays ("Recover failed messages",
# "Replay missing messages") up to 14 days back: a message id is remembered past both (the default
# of DEDUP_TTL_SECONDS), so a replay is answered 200, not queued again. The jobs themselves are kept
# for JOB_TTL_SECONDS only (service.stores.keys.JOB_TTL_MS): a dedup record is a small key, a job is not.
DEDUP_TTL_SECONDS = 15 * 24 * 3600
JOB_TTL_SECONDS = 7 * 24 * 3600
MAX_BODY_BYTES = 1024 * 1024
MIN_SECRET_BYTES = 16
INITIAL_SYNC_POLICIES = ("request", "auto", "off")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("json", "console")
PLACEHOLDER = "REPLACE_ME"
MIN_OPS_TOKEN_CHARS = 32  # /ops and the console: the token is their only lock
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
MAX_REPLICA_TIMEOUT_MS = 1500  # below the Redis clients' 2 s read timeout (service.stores.client)
# The lifecycle events' Redis Stream and its bound (XADD MAXLEN ~): the defaults of
# CODAT_EVENTS_STREAM and CODAT_EVENTS_MAXLEN, for the stores that need one without Settings.
LIFECYCLE_STREAM = "codat:lifecycle"
LIFECYCLE_MAXLEN = 200_000

Process = Literal["web", "worker", "both", "dev"]


class ConfigError(Exception):
    """A setting is missing or invalid; the message is one line, fit to print on exit."""


@dataclass(frozen=True)
class Setting:
    """One environment variable: everything said about it anywhere is said here."""

    env: str
    process: Process  # who needs it: web, worker, both, or only the dev tooling
    help: str  # one line, Markdown (docs/configuration.md's "meaning")
    # Reads it from the environment and checks it (ConfigError); None: not loaded into Settings.
    read: Callable[[Setting, Mapping[str, str]], Any] | None = None
    default: Any = None
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[str, ...] = ()
    secret: bool = False  # never in a repr or a log line
    required: Process | None = None  # that process refuses to start while it is unset
    missing: str = ""  # then: what to do, after "NAME is not set: "
    unset: str = ""  # what unset means, where the default alone does not say it
    dev: str = ""  # what `codat-webhooks dev` puts in its place where the environment has none
    field: str | None = None  # the Settings attribute it loads (filled in from the class)

    def needed_by(self, process: Process) -> bool:
        return self.process == process or (self.process == "both" and process in ("web", "worker"))

    def refusal(self) -> str:
        """Why a process that requires it refuses to start while it is unset."""
        return f"{self.env} is not set: {self.missing}"


def declare(env: str, read: Callable[[Setting, Mapping[str, str]], Any], **declared: Any) -> Any:
    """A Settings field loaded from `env`: its default is the declaration's (none where the
    dataclass must be given it), and the declaration rides along in the field's metadata."""
    setting = Setting(env, read=read, **declared)
    options: dict[str, Any] = {"repr": not setting.secret, "metadata": {"setting": setting}}
    if setting.required not in ("both", "web"):  # given whenever a process could load it
        options["default"] = setting.default
    return dataclasses.field(**options)


# --- how each kind of setting is read ------------------------------------------------------------


def _text(setting: Setting, env: Mapping[str, str]) -> Any:
    return env.get(setting.env, "").strip() or setting.default


def _url(setting: Setting, env: Mapping[str, str]) -> str:
    return env.get(setting.env, setting.default).rstrip("/")


def _names(setting: Setting, env: Mapping[str, str]) -> tuple[str, ...]:
    return _split(env.get(setting.env, ""))


def _credential(setting: Setting, env: Mapping[str, str]) -> str | None:
    given = env.get(setting.env, "")
    # deploy/kubernetes/config.yaml ships placeholders: never start on one
    if PLACEHOLDER in given:
        raise ConfigError(f"{setting.env} is still the placeholder from deploy/: set the real value")
    if setting.minimum is not None and 0 < len(given) < setting.minimum:
        # Never echo a credential, only its length.
        raise ConfigError(
            f"{setting.env} is {len(given)} characters: give at least {setting.minimum} random ones "
            "(e.g. `openssl rand -hex 32`)"
        )
    return given or None


def _signing_secrets(setting: Setting, env: Mapping[str, str]) -> tuple[str, ...]:
    secrets = _split(env.get(setting.env, ""))
    for index, secret in enumerate(secrets):
        try:
            key = signing_key(secret)
        except ValueError:
            key = b""
        if len(key) < MIN_SECRET_BYTES:
            # Never echo the value: it is a secret even when it is malformed.
            raise ConfigError(
                f"{setting.env} entry {index + 1} is not a signing secret: give whsec_<base64> "
                f"(or the bare base64) of at least {MIN_SECRET_BYTES} bytes"
            )
    return secrets


def _whole(setting: Setting, env: Mapping[str, str]) -> int:
    raw = env.get(setting.env, "").strip()
    if not raw:
        return int(setting.default)
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{setting.env} must be a whole number, not {raw!r}") from None
    if setting.minimum is not None and value < setting.minimum:
        raise ConfigError(f"{setting.env} must be at least {setting.minimum}, not {value}")
    if setting.maximum is not None and value > setting.maximum:
        raise ConfigError(f"{setting.env} must be at most {setting.maximum}, not {value}")
    return value


def _choice(setting: Setting, env: Mapping[str, str]) -> str:
    return _one_of(setting, env.get(setting.env, "").strip().lower() or setting.default)


def _choice_as_given(setting: Setting, env: Mapping[str, str]) -> str:
    # LOG_FORMAT has always been taken as given: blank or padded is refused, not defaulted.
    return _one_of(setting, env.get(setting.env, setting.default).lower())


def _one_of(setting: Setting, value: str) -> str:
    if value not in setting.choices:
        *rest, last = setting.choices
        either = f"{', '.join(rest)} or {last}" if len(rest) < 3 else f"one of {', '.join(setting.choices)}"
        raise ConfigError(f"{setting.env} must be {either}, not {value!r}")
    return value


def _cookie_secure(setting: Setting, env: Mapping[str, str]) -> bool:
    given = env.get(setting.env, "").strip().lower()
    if given in ("1", "true", "yes"):
        return True
    if given in ("0", "false", "no"):
        return False
    if given:
        raise ConfigError(f"{setting.env} must be 1 or 0, not {given!r}")
    return env.get("HOST", "").strip().lower() not in LOOPBACK_HOSTS


# --- the settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    redis_url: str = declare(
        "REDIS_URL",
        _text,
        process="both",
        default="",
        required="both",
        missing="point it at Redis, or start through `codat-webhooks dev` for an embedded Valkey",
        dev="an embedded Valkey",
        help="Redis/Valkey URL: `redis://[:password@]host:port/db`, `rediss://` (TLS), `unix:///path`, or through "
        "Sentinel `redis+sentinel://[:password@]host:26379,host2:26379/master/db` (deploy/SCALING.md)",
    )
    webhook_secrets: tuple[str, ...] = declare(
        "CODAT_WEBHOOK_SECRETS",
        _signing_secrets,
        process="web",
        default=(),
        secret=True,
        required="web",
        missing="give the whsec_... signing secret(s) from the Codat portal (only `codat-webhooks dev` generates one)",
        dev="a generated secret",
        help="comma-separated Standard Webhooks signing secrets (`whsec_<base64>`; prefix and padding optional); "
        "give two during rotation",
    )
    webhook_auth: str | None = declare(
        "CODAT_WEBHOOK_AUTH",
        _credential,
        process="web",
        secret=True,
        unset="legacy payloads need a signature like the rest",
        help="legacy rule-based webhooks: the exact `Authorization` header value Codat sends",
    )
    tolerance_seconds: int = declare(
        "WEBHOOK_TOLERANCE_SECONDS",
        _whole,
        process="web",
        default=300,
        minimum=1,
        help="maximum age, and maximum future skew, of `webhook-timestamp`",
    )
    codat_api_key: str | None = declare(
        "CODAT_API_KEY",
        _credential,
        process="worker",
        secret=True,
        required="worker",
        missing="give the Codat API key, or start through `codat-webhooks dev` for the local sandbox",
        dev="the local Codat sandbox",
        help="Codat API key, sent as `Authorization: Basic base64(key)`",
    )
    codat_base_url: str = declare(
        "CODAT_BASE_URL", _url, process="worker", default="https://api.codat.io", help="Codat API base"
    )
    sync_data_types: tuple[str, ...] = declare(
        "CODAT_SYNC_DATA_TYPES",
        _names,
        process="worker",
        default=(),
        help="empty: a first link calls `data/all`; a comma list: one `data/queue/{dataType}` call each",
    )
    ops_token: str | None = declare(
        "OPS_TOKEN",
        _credential,
        process="web",
        secret=True,
        minimum=MIN_OPS_TOKEN_CHARS,
        unset="`/ops` and the console do not exist (404)",
        help="bearer token for `/ops/*`, and what opens the ops console",
    )
    # The ops console's session cookie is Secure, except in dev mode: a web process bound to
    # loopback (HOST, as `codat-webhooks dev` sets it); OPS_COOKIE_SECURE=1/0 says it outright.
    ops_cookie_secure: bool = declare(
        "OPS_COOKIE_SECURE",
        _cookie_secure,
        process="web",
        default=True,
        choices=("1", "0"),
        unset="`Secure` unless `HOST` is loopback (dev mode)",
        help="`1`/`0`: the console's session cookie is `Secure`, or not",
    )
    job_timeout_seconds: int = declare(
        "WORKER_JOB_TIMEOUT",
        _whole,
        process="worker",
        default=60,
        minimum=5,
        help="seconds one job may run; a worker killed mid-job has its job run again after this + 10 s",
    )
    worker_metrics_port: int = declare(
        "WORKER_METRICS_PORT",
        _whole,
        process="worker",
        default=0,
        minimum=0,
        help="a worker's Prometheus port; 0: none (deploy/ sets 9100)",
    )
    shutdown_wait_seconds: int = declare(
        "WORKER_SHUTDOWN_WAIT",
        _whole,
        process="worker",
        default=30,
        minimum=1,
        help="on SIGTERM, seconds running jobs get to finish before they go back on the queue",
    )
    retry_base_seconds: float = declare(
        "WORKER_RETRY_BASE_SECONDS",
        _whole,
        process="worker",
        default=2,
        minimum=1,
        help="first backoff after a 5xx or timeout; doubles per try, capped at 300 s, with jitter",
    )
    initial_sync: str = declare(  # workers.initial_sync
        "CODAT_INITIAL_SYNC",
        _choice,
        process="worker",
        default="auto",
        choices=INITIAL_SYNC_POLICIES,
        help="`auto`: on a first link, request only the configured data types Codat will not pull by itself, and "
        "check later that its own pulls started; `request`: call as configured on every first link; `off`: state only",
    )
    initial_pulls_check_seconds: int = declare(
        "CODAT_INITIAL_PULLS_CHECK_SECONDS",
        _whole,
        process="worker",
        default=300,
        minimum=1,
        help="`auto`: how long after a first link the worker checks that the pulls Codat queues by itself started",
    )
    reconcile_interval_seconds: int = declare(  # workers.reconcile
        "RECONCILE_INTERVAL_SECONDS",
        _whole,
        process="worker",
        default=3600,
        minimum=0,
        help="how often the workers reconcile their state with Codat's API; 0: never",
    )
    events_stream: str = declare(
        "CODAT_EVENTS_STREAM",
        _text,
        process="both",
        default=LIFECYCLE_STREAM,
        help="the lifecycle events' Redis Stream (written by the workers, read by `/ops/events` and the console)",
    )
    events_maxlen: int = declare(
        "CODAT_EVENTS_MAXLEN",
        _whole,
        process="worker",
        default=LIFECYCLE_MAXLEN,
        minimum=1000,
        help="the lifecycle events stream's approximate bound (`XADD MAXLEN ~`)",
    )
    handlers: str | None = declare(  # workers.handlers
        "CODAT_HANDLERS",
        _text,
        process="worker",
        unset="no handlers",
        help="a module of Python handlers for lifecycle events, importable on the worker's path",
    )
    handler_max_tries: int = declare(
        "CODAT_HANDLER_MAX_TRIES",
        _whole,
        process="worker",
        default=8,
        minimum=1,
        help="tries of a failing handler call before it becomes a dead letter",
    )
    # A 2xx (and a first-sync claim) waits until this many replicas hold the write (WAIT);
    # 0: the primary's answer is enough (service.stores.replication).
    redis_min_replicas: int = declare(
        "REDIS_MIN_REPLICAS",
        _whole,
        process="both",
        default=0,
        minimum=0,
        help="a delivery is answered 2xx (and a first sync claimed) only once this many replicas hold the write "
        "(`WAIT`); fewer in time: 503 + `Retry-After`; 0: the primary's answer is enough",
    )
    redis_replica_timeout_ms: int = declare(
        "REDIS_REPLICA_TIMEOUT_MS",
        _whole,
        process="both",
        default=1000,
        minimum=1,
        # WAIT holds the connection that long: past the client's read timeout it would look
        # like a dead Redis, not like a slow replica.
        maximum=MAX_REPLICA_TIMEOUT_MS,
        help="how long a write waits for those replicas; then 503 + `Retry-After`",
    )
    # Delivery health (issue 23): how long a message id is remembered; this service's consumer URL
    # as registered with Codat (unset: the consumer watch says so once and skips); how often the
    # workers check it (0: never); nothing accepted for this long while Linked connections exist
    # is silence (service.stores.delivery_health, workers.delivery_watch).
    dedup_ttl_seconds: int = declare(
        "DEDUP_TTL_SECONDS",
        _whole,
        process="web",
        default=DEDUP_TTL_SECONDS,
        minimum=JOB_TTL_SECONDS,
        help="how long a message id is remembered, so that a replay is answered 200 and not processed twice "
        "(default: Codat's 14-day Portal replay plus its retries)",
    )
    public_webhook_url: str | None = declare(
        "PUBLIC_WEBHOOK_URL",
        _text,
        process="worker",
        unset="the consumer watch says so once (`consumer_watch.not_configured`) and skips",
        help="this service's URL exactly as registered with Codat: the workers' consumer watch finds its "
        "consumer by it",
    )
    watch_interval_seconds: int = declare(
        "WATCH_INTERVAL_SECONDS",
        _whole,
        process="worker",
        default=600,
        minimum=0,
        help="how often the workers run the delivery watch (Linked connections, silence, Codat's consumers); 0: never",
    )
    silence_alert_seconds: int = declare(
        "SILENCE_ALERT_SECONDS",
        _whole,
        process="both",
        default=12 * 3600,
        minimum=60,
        help="nothing answered 2xx for this long while Linked connections exist is silence (`delivery.silence`); "
        "above your quietest hours, below Codat's 28 h of retries",
    )
    log_level: str = declare(
        "LOG_LEVEL", _choice, process="both", default="info", choices=LOG_LEVELS, help="the least level logged"
    )
    log_format: str = declare(
        "LOG_FORMAT",
        _choice_as_given,
        process="both",
        default="json",
        choices=LOG_FORMATS,
        dev="console",
        help="`json`: one JSON object a line; `console`: for a person at a terminal",
    )
    port: int = declare("PORT", _whole, process="web", default=8000, minimum=1, help="the web process's port")

    def credentials(self) -> list[str]:
        """Every secret value the process holds, and the forms it travels in, for the log
        redaction step: a signing secret also without its whsec_ prefix, the API key also as
        the base64 of its Basic header."""
        values = [*self.webhook_secrets, self.webhook_auth, self.codat_api_key, self.ops_token]
        values += [secret.removeprefix("whsec_") for secret in self.webhook_secrets]
        if self.codat_api_key:
            values.append(base64.b64encode(self.codat_api_key.encode()).decode())
        return [value for value in values if value]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, require_secrets: bool = True) -> Settings:
        """`require_secrets`: the web process verifies deliveries; the worker never does."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for setting in LOADED:
            assert setting.read is not None and setting.field is not None
            value = values[setting.field] = setting.read(setting, env)
            if not value and setting.required in ("both", "web" if require_secrets else "both"):
                raise ConfigError(setting.refusal())
        return cls(**values)

    def unset_for(self, process: Process) -> Setting | None:
        """The first setting `process` requires that these settings leave unset, or None."""
        for setting in LOADED:
            if setting.required in (process, "both") and not getattr(self, str(setting.field)):
                return setting
        return None


# What a process reads from the environment without loading it into Settings.
ELSEWHERE = (
    Setting(
        "HOST",
        "web",
        "the web process's bind address (`codat-webhooks web --host` overrides it)",
        default="0.0.0.0",
        dev="127.0.0.1",
    ),
    Setting(
        "CODAT_DATA_DIR",
        "dev",
        "where `make run` keeps Valkey's data, the dev signing secret and `dev.env`",
        unset="`.data` at the checkout's root",
    ),
    Setting(
        "CODAT_LOG_TIME",
        "dev",
        "`LOG_FORMAT=console` only: `0` leaves the time out (as under honcho, which prints its own)",
        default="1",
    ),
    Setting("FORCE_COLOR", "dev", "`LOG_FORMAT=console` only: colour even when not a terminal"),
)

LOADED = tuple(
    dataclasses.replace(field.metadata["setting"], field=field.name)
    for field in dataclasses.fields(Settings)
    if "setting" in field.metadata
)
SETTINGS = LOADED + ELSEWHERE


def named(env: str) -> Setting:
    """The declaration of `env`; KeyError if there is none (so no text names an unknown one)."""
    for setting in SETTINGS:
        if setting.env == env:
            return setting
    raise KeyError(f"{env} is not a declared setting (service.core.config)")


def needed_by(process: Process) -> tuple[Setting, ...]:
    return tuple(setting for setting in SETTINGS if setting.needed_by(process))


# --- the docs' table -------------------------------------------------------------------------------

TABLE_START = "<!-- settings: generated by `python -m service.core.config --write docs/configuration.md` -->"
TABLE_END = "<!-- end of settings -->"


def markdown_table() -> str:
    """docs/configuration.md's table, one row per declaration."""
    rows = ["| environment | needed by | meaning | default | allowed |", "|---|---|---|---|---|"]
    for setting in SETTINGS:
        needed = {"both": "web, worker", "dev": "dev only"}.get(setting.process, setting.process)
        cells = (f"`{setting.env}`", needed, setting.help, _default_text(setting), _allowed_text(setting))
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows)


def _default_text(setting: Setting) -> str:
    if setting.required:
        said = "required" if setting.required == "both" else f"required by {setting.required}"
    elif setting.unset:
        said = f"unset: {setting.unset}"
    elif setting.default in (None, "", ()):
        said = "empty" if setting.default == () else "unset"
    elif setting.default is True or setting.default is False:
        said = f"`{int(setting.default)}`"
    else:
        said = f"`{setting.default}`"
    return f"{said}; `dev`: {setting.dev}" if setting.dev else said


def _allowed_text(setting: Setting) -> str:
    if setting.choices:
        return ", ".join(f"`{choice}`" for choice in setting.choices)
    unit = " characters" if setting.secret else ""
    if setting.minimum is not None and setting.maximum is not None:
        return f"{setting.minimum} to {setting.maximum}{unit}"
    if setting.minimum is not None:
        return f"at least {setting.minimum}{unit}"
    return ""


def with_table(document: str) -> str:
    """`document` with the text between TABLE_START and TABLE_END replaced by the table."""
    pattern = re.compile(re.escape(TABLE_START) + ".*?" + re.escape(TABLE_END), re.DOTALL)
    if not pattern.search(document):
        raise ValueError(f"no {TABLE_START} ... {TABLE_END} in the document")
    return pattern.sub(lambda _: f"{TABLE_START}\n{markdown_table()}\n{TABLE_END}", document)


# --- helpers -------------------------------------------------------------------------------------


def signing_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret; ValueError if it is not one.

    As in the Standard Webhooks libraries, the `whsec_` prefix and the base64 padding are both
    optional. Unlike them, a character outside the base64 alphabet is refused: the libraries
    skip it, so a mistyped secret would load and then fail every delivery.
    """
    encoded = secret.removeprefix("whsec_")
    # binascii.Error, or for a non-ASCII string a plain ValueError: both are ValueErrors.
    return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


if __name__ == "__main__":
    # No argument: print the table. --write PATH: put it into PATH between the markers.
    if sys.argv[1:2] == ["--write"] and len(sys.argv) == 3:
        with open(sys.argv[2], encoding="utf-8") as file:
            text = file.read()
        with open(sys.argv[2], "w", encoding="utf-8") as file:
            file.write(with_table(text))
    else:
        print(markdown_table())
