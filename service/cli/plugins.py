"""The dev commands (`dev`, `demo`, `sandbox`, `send`, `link`, `secret`, `env`).

They are registered by the package metadata (pyproject's `codat_webhooks.dev` entry points,
sandbox/devcli.py) and loaded only when one of them runs: the tool, which production runs,
names no dev module, and a production install (no sandbox/) says how to get them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from service.cli.common import fail

DEV_COMMAND_GROUP = "codat_webhooks.dev"


def dev_command(name: str) -> Callable[[argparse.Namespace], int]:
    """The handler of dev command `name`: loads its entry point when it runs."""

    def run(args: argparse.Namespace) -> int:
        from importlib.metadata import entry_points

        missing = (
            f"`codat-webhooks {name}` is dev tooling, not part of this install ({{}}): "
            "install the project with its dev extra, `pip install -e '.[dev]'`"
        )
        found = entry_points(group=DEV_COMMAND_GROUP, name=name)
        if not found:
            return fail(missing.format("no such command registered"))
        try:
            command: Callable[[argparse.Namespace], int] = next(iter(found)).load()
        except ImportError as exc:
            return fail(missing.format(f"{exc.name} is missing"))
        return command(args)

    return run
