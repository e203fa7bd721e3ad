"""Settings refuse what would start a process wrong: one line, never the value itself."""

from __future__ import annotations

import pytest

from service.core.config import ConfigError, Settings
from tests.support import SECRET

BASE = {"REDIS_URL": "redis://127.0.0.1:6379/0", "CODAT_WEBHOOK_SECRETS": SECRET}


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("LOG_LEVEL", "verbose", "LOG_LEVEL must be one of"),
        ("CODAT_INITIAL_SYNC", "sometimes", "CODAT_INITIAL_SYNC must be"),
        ("OPS_TOKEN", "REPLACE_ME", "OPS_TOKEN is still the placeholder"),
        ("CODAT_API_KEY", "REPLACE_ME", "CODAT_API_KEY is still the placeholder"),
        ("RECONCILE_INTERVAL_SECONDS", "-1", "must be at least 0"),
    ],
)
def test_a_bad_setting_is_refused_in_one_line(name: str, value: str, says: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({**BASE, name: value})
    assert says in str(refused.value) and "\n" not in str(refused.value)


def test_the_defaults_of_this_round() -> None:
    settings = Settings.from_env(BASE)
    assert (settings.initial_sync, settings.reconcile_interval_seconds) == ("auto", 3600)
    assert (settings.events_stream, settings.events_maxlen, settings.handlers) == ("codat:lifecycle", 200_000, None)
    assert Settings.from_env({**BASE, "LOG_LEVEL": "WARNING"}).log_level == "warning"
