"""Settings, read once from the environment (names fixed by the contract: README, "Configuration")."""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

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
PLACEHOLDER = "REPLACE_ME"
MIN_OPS_TOKEN_CHARS = 32  # /ops and the console: README, "Guessing the token"
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
MAX_REPLICA_TIMEOUT_MS = 1500  # below the Redis clients' 2 s read timeout (service.stores.client)


class ConfigError(Exception):
    """A setting is missing or invalid; the message is one line, fit to print on exit."""


@dataclass(frozen=True)
class Settings:
    redis_url: str
    webhook_secrets: tuple[str, ...] = field(repr=False)
    webhook_auth: str | None = field(default=None, repr=False)
    tolerance_seconds: int = 300
    codat_api_key: str | None = field(default=None, repr=False)
    codat_base_url: str = "https://api.codat.io"
    sync_data_types: tuple[str, ...] = ()
    ops_token: str | None = field(default=None, repr=False)
    # The ops console's session cookie is Secure, except in dev mode: a web process bound to
    # loopback (HOST, as `codat-webhooks dev` sets it); OPS_COOKIE_SECURE=1/0 says it outright.
    ops_cookie_secure: bool = True
    job_timeout_seconds: int = 60
    worker_metrics_port: int = 0
    shutdown_wait_seconds: int = 30
    retry_base_seconds: float = 2.0
    initial_sync: str = "auto"  # auto | request | off (workers.initial_sync)
    initial_pulls_check_seconds: int = 300  # auto: when to check Codat's own first pulls started
    reconcile_interval_seconds: int = 3600  # 0: never (workers.reconcile)
    events_stream: str = "codat:lifecycle"  # the lifecycle events' Redis Stream
    events_maxlen: int = 200_000  # its bound (XADD MAXLEN ~)
    handlers: str | None = None  # CODAT_HANDLERS: a module of lifecycle-event handlers (workers.handlers)
    handler_max_tries: int = 8  # then a failing handler call becomes a dead letter
    # A 2xx (and a first-sync claim) waits until this many replicas hold the write (WAIT);
    # 0: the primary's answer is enough (service.stores.replication).
    redis_min_replicas: int = 0
    redis_replica_timeout_ms: int = 1000  # then 503 + Retry-After: under the client's 2 s read timeout
    # Delivery health (issue 23): how long a message id is remembered; this service's consumer URL
    # as registered with Codat (unset: the consumer watch says so once and skips); how often the
    # workers check it (0: never); nothing accepted for this long while Linked connections exist
    # is silence (service.stores.delivery_health, workers.delivery_watch).
    dedup_ttl_seconds: int = DEDUP_TTL_SECONDS
    public_webhook_url: str | None = None
    watch_interval_seconds: int = 600
    silence_alert_seconds: int = 12 * 3600
    log_level: str = "info"
    log_format: str = "json"
    port: int = 8000

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
        redis_url = env.get("REDIS_URL", "").strip()
        if not redis_url:
            raise ConfigError(
                "REDIS_URL is not set: point it at Redis, or start through `codat-webhooks dev` for an embedded Valkey"
            )
        secrets = _split(env.get("CODAT_WEBHOOK_SECRETS", ""))
        if require_secrets and not secrets:
            raise ConfigError(
                "CODAT_WEBHOOK_SECRETS is not set: give the whsec_... signing secret(s) from the Codat "
                "portal (only `codat-webhooks dev` generates one)"
            )
        for index, secret in enumerate(secrets):
            try:
                key = signing_key(secret)
            except ValueError:
                key = b""
            if len(key) < MIN_SECRET_BYTES:
                # Never echo the value: it is a secret even when it is malformed.
                raise ConfigError(
                    f"CODAT_WEBHOOK_SECRETS entry {index + 1} is not a signing secret: give whsec_<base64> "
                    f"(or the bare base64) of at least {MIN_SECRET_BYTES} bytes"
                )
        log_format = env.get("LOG_FORMAT", "json").lower()
        if log_format not in ("json", "console"):
            raise ConfigError(f"LOG_FORMAT must be json or console, not {log_format!r}")
        log_level = env.get("LOG_LEVEL", "info").strip().lower() or "info"
        if log_level not in LOG_LEVELS:
            raise ConfigError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {log_level!r}")
        for name in ("CODAT_API_KEY", "OPS_TOKEN", "CODAT_WEBHOOK_AUTH"):
            # deploy/kubernetes/config.yaml ships placeholders: never start on one
            if PLACEHOLDER in env.get(name, ""):
                raise ConfigError(f"{name} is still the placeholder from deploy/: set the real value")
        if 0 < len(env.get("OPS_TOKEN", "")) < MIN_OPS_TOKEN_CHARS:
            # The token is the only lock on /ops and the console: never echo it, only its length.
            raise ConfigError(
                f"OPS_TOKEN is {len(env['OPS_TOKEN'])} characters: give at least {MIN_OPS_TOKEN_CHARS} random ones "
                "(e.g. `openssl rand -hex 32`)"
            )
        initial_sync = env.get("CODAT_INITIAL_SYNC", "auto").strip().lower() or "auto"
        if initial_sync not in INITIAL_SYNC_POLICIES:
            raise ConfigError(f"CODAT_INITIAL_SYNC must be request, auto or off, not {initial_sync!r}")
        return cls(
            redis_url=redis_url,
            webhook_secrets=secrets,
            webhook_auth=env.get("CODAT_WEBHOOK_AUTH") or None,
            tolerance_seconds=_int(env, "WEBHOOK_TOLERANCE_SECONDS", 300, minimum=1),
            codat_api_key=env.get("CODAT_API_KEY") or None,
            codat_base_url=env.get("CODAT_BASE_URL", "https://api.codat.io").rstrip("/"),
            sync_data_types=_split(env.get("CODAT_SYNC_DATA_TYPES", "")),
            ops_token=env.get("OPS_TOKEN") or None,
            ops_cookie_secure=_cookie_secure(env),
            job_timeout_seconds=_int(env, "WORKER_JOB_TIMEOUT", 60, minimum=5),
            worker_metrics_port=_int(env, "WORKER_METRICS_PORT", 0, minimum=0),
            shutdown_wait_seconds=_int(env, "WORKER_SHUTDOWN_WAIT", 30, minimum=1),
            retry_base_seconds=_int(env, "WORKER_RETRY_BASE_SECONDS", 2, minimum=1),
            initial_sync=initial_sync,
            initial_pulls_check_seconds=_int(env, "CODAT_INITIAL_PULLS_CHECK_SECONDS", 300, minimum=1),
            reconcile_interval_seconds=_int(env, "RECONCILE_INTERVAL_SECONDS", 3600, minimum=0),
            events_stream=env.get("CODAT_EVENTS_STREAM", "").strip() or "codat:lifecycle",
            events_maxlen=_int(env, "CODAT_EVENTS_MAXLEN", 200_000, minimum=1000),
            handlers=env.get("CODAT_HANDLERS", "").strip() or None,
            handler_max_tries=_int(env, "CODAT_HANDLER_MAX_TRIES", 8, minimum=1),
            redis_min_replicas=_int(env, "REDIS_MIN_REPLICAS", 0, minimum=0),
            redis_replica_timeout_ms=_replica_timeout(env),
            dedup_ttl_seconds=_int(env, "DEDUP_TTL_SECONDS", DEDUP_TTL_SECONDS, minimum=JOB_TTL_SECONDS),
            public_webhook_url=env.get("PUBLIC_WEBHOOK_URL", "").strip() or None,
            watch_interval_seconds=_int(env, "WATCH_INTERVAL_SECONDS", 600, minimum=0),
            silence_alert_seconds=_int(env, "SILENCE_ALERT_SECONDS", 12 * 3600, minimum=60),
            log_level=log_level,
            log_format=log_format,
            port=_int(env, "PORT", 8000, minimum=1),
        )


def signing_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret; ValueError if it is not one.

    As in the Standard Webhooks libraries, the `whsec_` prefix and the base64 padding are both
    optional. Unlike them, a character outside the base64 alphabet is refused: the libraries
    skip it, so a mistyped secret would load and then fail every delivery.
    """
    encoded = secret.removeprefix("whsec_")
    # binascii.Error, or for a non-ASCII string a plain ValueError: both are ValueErrors.
    return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)


def _cookie_secure(env: Mapping[str, str]) -> bool:
    given = env.get("OPS_COOKIE_SECURE", "").strip().lower()
    if given in ("1", "true", "yes"):
        return True
    if given in ("0", "false", "no"):
        return False
    if given:
        raise ConfigError(f"OPS_COOKIE_SECURE must be 1 or 0, not {given!r}")
    return env.get("HOST", "").strip().lower() not in LOOPBACK_HOSTS


def _replica_timeout(env: Mapping[str, str]) -> int:
    value = _int(env, "REDIS_REPLICA_TIMEOUT_MS", 1000, minimum=1)
    if value > MAX_REPLICA_TIMEOUT_MS:
        # WAIT holds the connection that long: past the client's read timeout it would look
        # like a dead Redis, not like a slow replica.
        raise ConfigError(f"REDIS_REPLICA_TIMEOUT_MS must be at most {MAX_REPLICA_TIMEOUT_MS}, not {value}")
    return value


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, not {value}")
    return value
