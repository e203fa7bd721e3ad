"""The tool's commands, declared as data: name, help, what it reads, its arguments, its handler.

`build_parser` turns the table into argparse's parser; nothing else declares a command. What a
command reads is rendered from the settings' declarations (service.core.config), so that no
environment name is written here that the loader does not know.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from service.cli.codat import company, register
from service.cli.common import version
from service.cli.connection import connection
from service.cli.dead_letters import dead_letters
from service.cli.events import events
from service.cli.gaps import gaps
from service.cli.plugins import dev_command
from service.cli.processes import web, worker
from service.cli.reconcile import reconcile
from service.cli.status import status
from service.core.config import SETTINGS, Process, named, needed_by

DESCRIPTION = "`codat-webhooks`: the command-line tool. `codat-webhooks COMMAND --help` for each command."
EPILOG = (
    "exit status: 0 done; 1 the answer was no (not found, or Codat said no); 2 a setting or an "
    "argument is wrong; 3 Redis, Codat or the service did not answer; 4 `dev` already runs in this checkout"
)


@dataclass(frozen=True)
class Arg:
    """One argument, as argparse's add_argument takes it; a callable default is called when the
    parser is built (e.g. the environment's HOST)."""

    flags: tuple[str, ...]
    options: dict[str, Any]


def arg(*flags: str, **options: Any) -> Arg:
    return Arg(flags, options)


@dataclass(frozen=True)
class Command:
    name: str
    run: Callable[[argparse.Namespace], int]
    help: str
    reads: str
    args: tuple[Arg, ...] = ()
    process: bool = False  # web or worker: refusals are log lines, settings the environment's only


# --- what the commands read, from the settings' declarations ---------------------------------------

# The tool's commands read the environment, then a running dev stack's values.
DEV_ENV = "; where the environment leaves one unset, the value of a `make run` running in this checkout (.data/dev.env)"


def names(*envs: str) -> str:
    """Each setting by name, with its default where it has one."""
    said = []
    for setting in map(named, envs):
        if setting.unset:
            said.append(f"{setting.env} (default: {setting.unset})")
        elif setting.default not in (None, "", ()) and not setting.required:
            said.append(f"{setting.env} (default {setting.default})")
        else:
            said.append(setting.env)
    return ", ".join(said)


def process_reads(process: Process) -> str:
    return ", ".join(setting.env for setting in needed_by(process))


def dev_reads() -> str:
    stand_ins = ", ".join(f"{setting.env} (unset: {setting.dev})" for setting in SETTINGS if setting.dev)
    return f"{stand_ins}, and everything web and worker read"


CODAT_ENV = names("CODAT_API_KEY", "CODAT_BASE_URL") + DEV_ENV
REDIS_ENV = names("REDIS_URL") + DEV_ENV
DATA_DIR = names("CODAT_DATA_DIR")

COMMANDS = (
    Command(
        "dev",
        dev_command("dev"),
        "run web + worker (Procfile), with an embedded Valkey, a generated signing secret "
        "and the local Codat sandbox wherever the environment has none; Ctrl-C stops it all",
        reads=dev_reads(),
    ),
    Command(
        "demo",
        dev_command("demo"),
        "run Codat's quick-start end to end against the sandbox; exit 0 once the "
        "initial sync was requested and its read-completed event recorded",
        reads="nothing: it runs its own Valkey, sandbox, web and worker on free ports, with throwaway data",
    ),
    Command(
        "web",
        web,
        "run the web process (POST /webhooks/codat) on $PORT",
        reads=process_reads("web"),
        process=True,
        args=(
            arg(
                "--host",
                default=lambda: os.environ.get("HOST", named("HOST").default),
                help="address to bind (default: $HOST, else 0.0.0.0)",
            ),
            arg(
                "--http",
                choices=["auto", "httptools", "h11"],
                default="auto",
                help="HTTP parser (default: httptools where installed, else h11)",
            ),
        ),
    ),
    Command(
        "worker",
        worker,
        "run the arq worker",
        reads=process_reads("worker"),
        process=True,
        args=(arg("--burst", action="store_true", help="exit once the queue is empty"),),
    ),
    Command(
        "sandbox",
        dev_command("sandbox"),
        "run the local Codat API (sandbox/)",
        # The sandbox's own settings, declared by the sandbox (sandbox/app.py), not the service's.
        reads="SANDBOX_API_KEY, SANDBOX_WEBHOOK_URL, SANDBOX_WEBHOOK_SECRET, SANDBOX_PUBLIC_URL, "
        "SANDBOX_TIME_SCALE, SANDBOX_PULL_STEP_SECONDS, SANDBOX_ALLOW_ANY_HOST",
        args=(
            arg("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a container)"),
            arg("--port", type=int, default=8400, help="port to listen on (default 8400)"),
        ),
    ),
    Command(
        "send",
        dev_command("send"),
        "send an example event from Codat's Webhooks.json, signed, to the service; against the sandbox "
        "(as `make run` has it) the example's company and connection are first made there, so the "
        "event is carried through to a real outcome",
        reads=names("PORT", "CODAT_WEBHOOK_SECRETS", "CODAT_BASE_URL", "CODAT_API_KEY", "REDIS_URL") + DEV_ENV,
        args=(
            arg("event_type", nargs="?", help="e.g. connection.connected (--list shows them all)"),
            arg("--example", help="which of the type's examples (default: the first)"),
            arg("--url", help="where to post it (default: http://127.0.0.1:$PORT/webhooks/codat)"),
            arg("--secret", help="signing secret (default: CODAT_WEBHOOK_SECRETS, else the dev one)"),
            arg("--list", action="store_true", help="list the event types and their examples"),
            arg(
                "--keep-ids",
                action="store_true",
                help="send the example's own company and connection ids, even against the sandbox "
                "(which does not know them)",
            ),
            arg("--no-wait", action="store_true", help="do not wait for the worker's outcome (default: up to 15 s)"),
        ),
    ),
    Command(
        "register",
        register,
        "register a webhook consumer URL with Codat (POST /webhooks)",
        reads=CODAT_ENV,
        args=(
            arg("url", help="e.g. https://hooks.example.com/webhooks/codat"),
            arg("--event-type", action="append", help="subscribe to this type (repeat; default: all)"),
        ),
    ),
    Command(
        "company",
        company,
        "create a company in Codat (POST /companies)",
        reads=CODAT_ENV,
        args=(
            arg("name", help="the company's name, e.g. 'Platypus Properties'"),
            arg("--platform", default="mqjo", help="platform key (default mqjo, the Sandbox)"),
        ),
    ),
    Command(
        "link",
        dev_command("link"),
        "sandbox only: finish Link for a company, as its SMB would",
        reads=CODAT_ENV,
        args=(
            arg("company_id", help="the id `codat-webhooks company` printed"),
            arg("--platform", default="mqjo", help="platform key of the connection (default mqjo)"),
        ),
    ),
    Command(
        "reconcile",
        reconcile,
        "compare the service's state with Codat's API now (as the workers do every RECONCILE_INTERVAL_SECONDS) "
        "and request initial syncs that were missed",
        reads=process_reads("worker") + DEV_ENV,
        args=(
            arg("--company", help="only this company (its id)"),
            arg("--dry-run", action="store_true", help="report what is out of line, change nothing"),
        ),
    ),
    Command(
        "events",
        events,
        "follow the lifecycle events (connection.linked, sync.completed, ...) the workers derive",
        reads=names("REDIS_URL", "CODAT_EVENTS_STREAM") + DEV_ENV,
        args=(
            arg("action", choices=["tail"], help="print the newest, then follow"),
            arg("--type", help="only this event type, e.g. connection.linked"),
            arg("--company", help="only this company (its id)"),
            arg("--last", type=int, default=10, help="how many of the newest to print first (default 10)"),
            arg("--no-follow", dest="follow", action="store_false", help="print the newest and stop"),
            arg("--json", action="store_true", help="one JSON object a line instead of a short line"),
        ),
    ),
    Command(
        "gaps",
        gaps,
        "list the intervals in which the service could not take Codat's deliveries (503s, no web running, "
        "the consumer disabled), newest first, with what to do in Codat's Portal",
        reads=REDIS_ENV,
        args=(
            arg("--limit", type=int, default=50, help="how many to list, newest first (default 50)"),
            arg("--json", action="store_true", help="one JSON object a line"),
        ),
    ),
    Command(
        "connection",
        connection,
        "show a connection's reconciled state, as JSON",
        reads=REDIS_ENV,
        args=(arg("connection_id", help="Codat's connectionId (a UUID)"),),
    ),
    Command(
        "dead-letters",
        dead_letters,
        "list dead letters, or replay one by id",
        reads=REDIS_ENV,
        args=(
            arg("action", choices=["list", "replay"], help="list them (newest first), or replay one"),
            arg("id", nargs="?", help="the dead letter to replay"),
            arg("--limit", type=int, default=100, help="how many to list, newest first"),
        ),
    ),
    Command(
        "secret",
        dev_command("secret"),
        "print the dev signing secret (made on first use, kept in .data/webhook-secret at the checkout's root)",
        reads=DATA_DIR,
    ),
    Command(
        "env",
        dev_command("env"),
        'print the running `make run`\'s settings as export lines, for a shell: eval "$(codat-webhooks env)"',
        reads=DATA_DIR,
    ),
    Command(
        "status",
        status,
        "say what is running, where, and what is misconfigured; exit 0 only if all of it answers",
        reads="every setting web and worker read" + DEV_ENV,
    ),
)


def build_parser(commands: tuple[Command, ...] = COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codat-webhooks", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"codat-webhooks {version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in commands:
        sub = subparsers.add_parser(
            command.name, help=command.help, description=command.help, epilog=f"reads: {command.reads}"
        )
        sub.set_defaults(command_spec=command)
        for argument in command.args:
            options = dict(argument.options)
            if callable(options.get("default")):
                options["default"] = options["default"]()
            sub.add_argument(*argument.flags, **options)
    return parser
