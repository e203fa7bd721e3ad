"""`status`: what is running, where, and what is misconfigured (the checks: service.status)."""

from __future__ import annotations

import argparse

from service.cli.common import EXIT_NO, EXIT_OK, version
from service.core import devenv


def status(args: argparse.Namespace) -> int:
    from service import status as checks

    found = checks.run(devenv.merged())
    print(f"codat-webhooks {version()}")
    print(checks.render(found))
    return EXIT_OK if all(check.ok for check in found) else EXIT_NO
