"""Each setting is declared once (service/core/config.py), and what is said about settings
elsewhere comes from that declaration: docs/configuration.md's table, the loader's defaults, the
command-line tool's "reads:" lines (issue 22, "One declaration per setting")."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from typing import Any

import pytest

from service.cli.commands import COMMANDS
from service.core import config
from service.core.config import ELSEWHERE, LOADED, SETTINGS, TABLE_END, TABLE_START, Settings
from tests.support import ROOT

DOCS = ROOT / "docs" / "configuration.md"


def test_every_settings_field_has_exactly_one_declaration_and_every_declaration_a_field() -> None:
    fields = [field.name for field in dataclasses.fields(Settings)]
    assert sorted(setting.field for setting in LOADED if setting.field) == sorted(fields)
    for field in dataclasses.fields(Settings):
        assert isinstance(field.metadata.get("setting"), config.Setting), f"Settings.{field.name} is not declared"
    assert all(setting.field is None and setting.read is None for setting in ELSEWHERE)
    names = Counter(setting.env for setting in SETTINGS)
    assert [name for name, count in names.items() if count > 1] == []


def test_each_declaration_says_who_needs_it_and_what_it_is() -> None:
    for setting in SETTINGS:
        assert setting.process in ("web", "worker", "both", "dev"), setting.env
        assert setting.help and "\n" not in setting.help, f"{setting.env} has no one-line help"
        assert setting.required in (None, "web", "worker", "both"), setting.env
        assert not setting.required or setting.missing, f"{setting.env} is required but says not what to do"
        if setting.choices and setting.default is not None and setting.read is not None:
            assert str(setting.default) in setting.choices or isinstance(setting.default, bool), setting.env


def test_the_loader_s_defaults_are_the_declared_ones() -> None:
    loaded = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/0"}, require_secrets=False)
    for setting in LOADED:
        if not setting.required and setting.env != "OPS_COOKIE_SECURE":  # unset: follows HOST
            assert getattr(loaded, str(setting.field)) == setting.default, setting.env


@pytest.mark.parametrize(
    "setting", [s for s in LOADED if s.minimum is not None and not s.secret], ids=lambda setting: setting.env
)
def test_a_number_below_its_declared_minimum_is_refused(setting: config.Setting) -> None:
    env = {"REDIS_URL": "redis://127.0.0.1:6379/0", setting.env: str(setting.minimum - 1)}
    with pytest.raises(config.ConfigError, match=f"^{setting.env} must be at least {setting.minimum}, not "):
        Settings.from_env(env, require_secrets=False)
    assert (
        getattr(
            Settings.from_env({**env, setting.env: str(setting.minimum)}, require_secrets=False), str(setting.field)
        )
        == setting.minimum
    )


def test_the_docs_table_is_the_one_the_declarations_render() -> None:
    text = DOCS.read_text()
    found = re.search(re.escape(TABLE_START) + r"\n(.*?)\n" + re.escape(TABLE_END), text, re.DOTALL)
    assert found, f"docs/configuration.md has lost its {TABLE_START} ... {TABLE_END} markers"
    assert found.group(1) == config.markdown_table(), (
        "docs/configuration.md's table differs from the declarations in service/core/config.py: "
        "run `python -m service.core.config --write docs/configuration.md`"
    )
    documented = re.findall(r"^\| `([A-Z_]+)` \|", found.group(1), re.MULTILINE)
    assert documented == [setting.env for setting in SETTINGS]


def test_what_the_commands_say_they_read_is_declared() -> None:
    declared = {setting.env for setting in SETTINGS}
    for command in COMMANDS:
        named = set(re.findall(r"\b[A-Z][A-Z0-9]*_[A-Z0-9_]+\b|\bPORT\b|\bHOST\b", command.reads))
        if command.name != "sandbox":  # SANDBOX_*: the sandbox's own, declared there
            assert named <= declared, f"`{command.name}` names {sorted(named - declared)}, declared nowhere"
    by_name: dict[str, Any] = {command.name: command for command in COMMANDS}
    web = {setting.env for setting in SETTINGS if setting.needed_by("web")}
    worker = {setting.env for setting in SETTINGS if setting.needed_by("worker")}
    assert set(by_name["web"].reads.split(", ")) == web
    assert set(by_name["worker"].reads.split(", ")) == worker
    assert "CODAT_API_KEY" in worker and "CODAT_WEBHOOK_SECRETS" in web


def test_the_worker_s_requirement_is_the_declared_one() -> None:
    [required] = [setting for setting in LOADED if setting.required == "worker"]
    settings = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/0"}, require_secrets=False)
    assert settings.unset_for("worker") == required
    assert settings.unset_for("web") == config.named("CODAT_WEBHOOK_SECRETS")  # web loads it required
    assert required.refusal().startswith(f"{required.env} is not set: ")


def test_the_table_can_be_written_back(tmp_path: Any) -> None:
    copy = tmp_path / "configuration.md"
    copy.write_text(DOCS.read_text().replace("| `PORT` |", "| `PORT` (edited by hand) |"))
    assert config.with_table(copy.read_text()) == DOCS.read_text()


def test_the_lifecycle_stream_s_name_and_bound_are_the_declared_defaults() -> None:
    # The stores' own defaults (for a store built without Settings) must be the declared ones.
    from service.stores import keys
    from service.stores.outbox import Outbox

    assert (config.named("CODAT_EVENTS_STREAM").default, config.named("CODAT_EVENTS_MAXLEN").default) == (
        config.LIFECYCLE_STREAM,
        config.LIFECYCLE_MAXLEN,
    )
    assert keys.LIFECYCLE_STREAM == config.LIFECYCLE_STREAM
    assert (Outbox().stream, Outbox().maxlen) == (config.LIFECYCLE_STREAM, config.LIFECYCLE_MAXLEN)
