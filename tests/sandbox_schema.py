"""Schemathesis on Codat's own Codat-Platform.json against the sandbox: every operation the
sandbox implements, every check, every phase (examples, coverage, fuzzing, stateful), on loopback.

    python -m tests.sandbox_schema --examples 500        # starts its own sandbox process
    python -m tests.sandbox_schema --url http://127.0.0.1:8400 --key sandbox-dev-key

It exits 1 on any failure and prints each one. `tests/test_sandbox_schema.py` runs it bounded.
"""

from __future__ import annotations

import argparse
import base64
import copy
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import schemathesis
from schemathesis.engine import events, from_schema
from schemathesis.engine.statistic import Statistic

from sandbox import catalogue

# The operations the sandbox implements (sandbox.app.api_routes); the rest of the spec is left out.
IMPLEMENTED = (
    "list-companies", "create-company", "get-company", "delete-company",
    "list-connections", "create-connection", "get-connection", "delete-connection", "unlink-connection",
    "update-connection-authorization",
    "refresh-company-data", "refresh-data-type", "get-company-data-status", "list-pull-operations",
    "get-pull-operation",
    "list-webhook-consumers", "create-webhook-consumer", "delete-webhook-consumer",
)  # fmt: skip

# Where Codat-Platform.json is looser than Codat, the sandbox answers as Codat does, and the run
# is told so (`spec()`):
# - a request body these operations cannot do without is marked required, and so are the fields
#   Codat needs (`platformKey`, a consumer's `url`), so that leaving them out is invalid data;
REQUIRED_BODY = {
    "create-company": (),
    "create-connection": ("platformKey",),
    "unlink-connection": (),
    "update-connection-authorization": (),
    "create-webhook-consumer": ("url",),
}
# - these operations refuse a body that breaks their schema, or a change the connection's state does
#   not allow, with a 400 that the spec does not list for them.
UNDOCUMENTED_400 = ("create-connection", "unlink-connection", "update-connection-authorization")
# Valid data that is still refused with a 400, by design or because of state a random request
# does not set up: a consumer URL that is not loopback (sandbox.inputs.url_refusal), unlinking
# anything but a Linked connection, or to anything but Unlinked, and pulls for a company with no
# Linked connection.
REFUSES_VALID_DATA = ("create-webhook-consumer", "unlink-connection", "refresh-company-data", "refresh-data-type")


def spec() -> dict[str, Any]:
    """Codat-Platform.json with only the operations the sandbox implements (so that `Allow` is
    judged against those), and the errata above."""
    document = catalogue.platform()  # a fresh parse each time, so it is ours to change
    for path, item in list(document["paths"].items()):
        for method, operation in list(item.items()):
            operation_id = operation.get("operationId") if isinstance(operation, dict) else None
            if operation_id is None:
                continue
            if operation_id not in IMPLEMENTED:
                del item[method]
                continue
            if operation_id in UNDOCUMENTED_400:
                operation["responses"].setdefault("400", copy.deepcopy(operation["responses"]["401"]))
            if operation_id in REQUIRED_BODY:
                body = operation["requestBody"]
                body["required"] = True
                fields = REQUIRED_BODY[operation_id]
                if fields:
                    schema = body["content"]["application/json"]["schema"]
                    body["content"]["application/json"]["schema"] = {"allOf": [schema, {"required": list(fields)}]}
        if not any(isinstance(operation, dict) and "operationId" in operation for operation in item.values()):
            del document["paths"][path]
    return document


def config(base_url: str, api_key: str, examples: int, seed: int | None) -> schemathesis.Config:
    auth = "Basic " + base64.b64encode(api_key.encode()).decode()
    positive = ["2xx", "3xx", "400", "401", "403", "404", "409", "429"]
    data: dict[str, Any] = {
        "base-url": base_url,
        "headers": {"Authorization": auth},
        "generation": {"max-examples": examples},
        "checks": {"enabled": True},
        "operations": [
            {
                "include-operation-id": operation_id,
                "checks": {"positive_data_acceptance": {"expected-statuses": positive}},
            }
            for operation_id in REFUSES_VALID_DATA
        ],
    }
    if seed is not None:
        data["seed"] = seed
    return schemathesis.Config.from_dict(data)


@dataclass
class Outcome:
    cases: int = 0
    operations: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def render(self) -> str:
        lines = [
            f"{self.cases} cases on {len(self.operations)} operations: "
            f"{len(self.failures)} failures, {len(self.errors)} errors"
        ]
        return "\n".join(lines + self.failures + self.errors)


def run(base_url: str, api_key: str, examples: int, seed: int | None = None) -> Outcome:
    schema = schemathesis.openapi.from_dict(spec(), config=config(base_url, api_key, examples, seed))
    statistic = Statistic()
    outcome = Outcome()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished) and event.is_test_scenario:
            statistic.on_scenario_finished(event.recorder)
        elif isinstance(event, events.NonFatalError):
            outcome.errors.append(f"error in {event.label}: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            outcome.errors.append(f"fatal: {event.exception!r}")
    outcome.cases = statistic.total_cases
    outcome.operations = statistic.tested_operations
    for label, groups in statistic.failures.items():
        for group in groups.values():
            for failure in group.failures:
                response = group.response
                status = response.status_code if response is not None else None
                outcome.failures.append(
                    f"{label}: {failure.title} (answered {status})\n  {failure.message}\n"
                    f"  reproduce: {group.code_sample}"
                )
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.sandbox_schema", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=100, help="examples per operation and phase")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--url", help="a running sandbox; by default one is started on a free loopback port")
    parser.add_argument("--key", help="its API key (SANDBOX_API_KEY)")
    args = parser.parse_args(argv)
    if args.url:
        outcome = run(args.url, args.key or "sandbox-dev-key", args.examples, args.seed)
    else:
        from tests.support import SANDBOX_KEY, Sandbox

        with tempfile.TemporaryDirectory() as scratch:
            sandbox = Sandbox(Path(scratch) / "sandbox.log")
            sandbox.env["SANDBOX_WEBHOOK_SECRET"] = ""  # the consumers it registers are never posted to
            sandbox.start()
            try:
                outcome = run(sandbox.url, SANDBOX_KEY, args.examples, args.seed)
            finally:
                sandbox.stop()
    print(outcome.render())
    return 1 if outcome.failures or outcome.errors else 0


if __name__ == "__main__":
    sys.exit(main())
