"""Schemathesis on Codat-Platform.json against a sandbox process of its own: the operations the
sandbox implements, all checks and phases, bounded to a few examples each so that `make test`
stays quick. The longer run is `python -m tests.sandbox_schema --examples 500`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.sandbox_schema import IMPLEMENTED, run
from tests.support import SANDBOX_KEY, Sandbox

EXAMPLES = 25
# Fixed, so that `make test` is repeatable; the long run draws a new seed each time.
SEED = 20261201


@pytest.fixture(scope="module")
def own_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    # Its own process: the run registers consumers and creates companies that other tests must
    # not see. No signing secret, so whatever consumers it registers are never posted to.
    sandbox = Sandbox(tmp_path_factory.mktemp("schema") / "sandbox.log")
    sandbox.env["SANDBOX_WEBHOOK_SECRET"] = ""
    sandbox.start()
    yield sandbox
    sandbox.stop()


@pytest.mark.timeout(120)
def test_schemathesis_finds_nothing_on_the_implemented_operations(own_sandbox: Sandbox) -> None:
    outcome = run(own_sandbox.url, SANDBOX_KEY, EXAMPLES, seed=SEED)
    print(outcome.render())
    assert not outcome.failures and not outcome.errors, outcome.render()
    assert len(outcome.operations) == len(IMPLEMENTED) and outcome.cases > 10 * len(IMPLEMENTED)
    assert "Traceback" not in own_sandbox.log_path.read_text()
