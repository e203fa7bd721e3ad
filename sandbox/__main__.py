"""python -m sandbox [--port N]: run the sandbox Codat API on loopback."""

from __future__ import annotations

import argparse
import os

import uvicorn

from sandbox.app import create_app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8400)
    args = parser.parse_args()
    public = os.environ.get("SANDBOX_PUBLIC_URL", f"http://{args.host}:{args.port}")
    app = create_app(public_url=public)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
