"""`codat-webhooks`: the command-line tool. `codat-webhooks COMMAND --help` for each command.

One module per family of commands: `processes` (web, worker), `codat` (register, company),
`connection`, `dead_letters`, `events`, `gaps`, `reconcile`, `status`, and `plugins`, which
loads the dev commands from their entry points only when one runs. `commands` declares every
command as data (name, help, what it reads, arguments, handler); `run.main` parses and runs one.
No module holds state: whether a command is a process travels with its declaration.
"""

from __future__ import annotations

from service.cli.codat import codat_client, show
from service.cli.common import EXIT_CONFIG, EXIT_NO, EXIT_OK, EXIT_RUNNING, EXIT_UNREACHABLE, fail
from service.cli.plugins import DEV_COMMAND_GROUP
from service.cli.run import main

__all__ = [
    "DEV_COMMAND_GROUP",
    "EXIT_CONFIG",
    "EXIT_NO",
    "EXIT_OK",
    "EXIT_RUNNING",
    "EXIT_UNREACHABLE",
    "codat_client",
    "fail",
    "main",
    "show",
]
