"""`main`: parse, run the command, and turn what escapes it into one line and an exit status."""

from __future__ import annotations

import argparse
import os
import sys

import httpx

from service.cli.commands import Command, build_parser
from service.cli.common import EXIT_CONFIG, EXIT_OK, EXIT_UNREACHABLE, fail
from service.cli.processes import refuse


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command: Command = args.command_spec
    # The processes' refusals are log lines (process.refused_to_start); the rest answer a person.
    failed = refuse if command.process else fail
    try:
        return int(command.run(args) or 0)
    except httpx.UnsupportedProtocol:  # e.g. --url without http://
        url = getattr(args, "url", None) or "the URL"
        return failed(f"{url!r} is not an http(s) URL: write http://HOST:PORT/...", EXIT_CONFIG)
    except httpx.TransportError as exc:
        return failed(_unreachable(args, exc), EXIT_UNREACHABLE)
    except httpx.InvalidURL as exc:
        return failed(f"not a URL: {exc}", EXIT_CONFIG)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `codat-webhooks send --list | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _unreachable(args: argparse.Namespace, exc: httpx.TransportError) -> str:
    """What to do when an HTTP peer did not answer: the service for `send`, Codat for the rest."""
    try:
        url = exc.request.url
        where = f"{url.scheme}://{url.netloc.decode()}"
    except RuntimeError:  # no request attached
        where = "the server"
    reason = type(exc).__name__
    if args.command == "send":
        return f"nothing answers at {where} ({reason}): start the service (`make run`), or give --url"
    return (
        f"Codat at {where} does not answer ({reason}): check CODAT_BASE_URL, or start `make run`, "
        "which runs the sandbox"
    )
