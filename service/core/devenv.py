"""The dev stack's settings, found from any directory of the checkout.

`codat-webhooks dev` (`make run`) writes what it started into `.data/dev.env` at the checkout's
root, and removes it when it stops: REDIS_URL, PORT, the sandbox's CODAT_BASE_URL and its
(public) dev key, and the dev signing secret. The command-line tool reads it for any of those
names the environment does not set, so a second terminal needs no export line, and
`codat-webhooks env` prints it for a shell. Without a running dev stack there is no file and
nothing is read: a production install (no checkout) never has one.

`handlers/` at the checkout's root is where an integrator's CODAT_HANDLERS module lives in dev
(docs/integrator/handlers.md): `make run` puts it on the processes' PYTHONPATH, and `status` checks
the module with the same path. Neither ruff nor pytest looks in it (pyproject.toml).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path

# The checkout's root: service/core/devenv.py -> ../../
CHECKOUT = Path(__file__).resolve().parent.parent.parent
# The names it may carry; anything else in the file is ignored.
NAMES = ("REDIS_URL", "PORT", "HOST", "CODAT_BASE_URL", "CODAT_API_KEY", "CODAT_WEBHOOK_SECRETS", "CODAT_HANDLERS")
HANDLERS_DIR = "handlers"


def data_dir() -> Path:
    """`.data` at the checkout's root (CODAT_DATA_DIR to move it), whatever the working directory."""
    configured = os.environ.get("CODAT_DATA_DIR")
    return Path(configured).resolve() if configured else CHECKOUT / ".data"


def handlers_dir() -> Path | None:
    """The checkout's handlers/ folder, where there is a checkout (not in an installed package)."""
    if not (CHECKOUT / "pyproject.toml").exists():
        return None
    return CHECKOUT / HANDLERS_DIR


def python_path(env: Mapping[str, str]) -> str:
    """PYTHONPATH as the dev stack's processes get it: the checkout's handlers/ first, then the
    environment's own."""
    parts = [part for part in env.get("PYTHONPATH", "").split(os.pathsep) if part]
    folder = handlers_dir()
    if folder is not None and str(folder) not in parts:
        parts.insert(0, str(folder))
    return os.pathsep.join(parts)


def path() -> Path:
    return data_dir() / "dev.env"


def read() -> dict[str, str]:
    try:
        text = path().read_text()
    except OSError:
        return {}
    found = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name in NAMES:
            [found[name]] = shlex.split(value) or [""]
    return found


def write(values: Mapping[str, str]) -> Path:
    """Readable by this user only: it holds the dev signing secret."""
    target = path()
    target.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{name}={shlex.quote(values[name])}" for name in NAMES if values.get(name)]
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write("\n".join(lines) + "\n")
    return target


def remove() -> None:
    path().unlink(missing_ok=True)


def merged(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment, with the dev stack's values for the names it leaves unset."""
    env = dict(os.environ if env is None else env)
    for name, value in read().items():
        if not env.get(name):
            env[name] = value
    return env


class AlreadyRunning(Exception):
    """Another dev stack holds this checkout's lock; the message is its pid."""


def lock_path() -> Path:
    return data_dir() / "dev.lock"


def lock() -> int:
    """Take the checkout's dev lock for this process's lifetime (the OS drops it when the process
    ends, however it ends: no stale lock to clean). AlreadyRunning if another process holds it:
    two `make run` in one checkout would share one Valkey's files and one dev.env."""
    import fcntl

    target = lock_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode().strip()
        os.close(fd)
        raise AlreadyRunning(holder or "unknown") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def running_pid() -> str | None:
    """The pid of the dev stack running in this checkout, or None."""
    if not lock_path().exists():  # never ran here (or a production install): create nothing
        return None
    try:
        os.close(lock())
    except AlreadyRunning as running:
        return str(running)
    except OSError:
        return None
    return None
