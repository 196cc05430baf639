from __future__ import annotations

import pytest

from conveyor import ConfigError
from conveyor.settings import DEFAULT_URL, Settings


def test_defaults_to_embedded_sqlite() -> None:
    assert Settings.load({}).url == DEFAULT_URL


def test_conveyor_url_wins_over_redis_url() -> None:
    assert Settings.load({"REDIS_URL": "redis://r"}).url == "redis://r"
    env = {"REDIS_URL": "redis://r", "CONVEYOR_URL": "sqlite:///x.db"}
    assert Settings.load(env).url == "sqlite:///x.db"


def test_flags_override_environment_and_none_falls_through() -> None:
    s = Settings.load({"CONVEYOR_CONCURRENCY": "4"}, concurrency=None, shutdown_timeout=5)
    assert (s.concurrency, s.shutdown_timeout) == (4, 5)
    assert Settings.load({"CONVEYOR_QUEUES": "a, b"}).queues == ("a", "b")


def test_unknown_variable_suggests_the_fix() -> None:
    with pytest.raises(ConfigError, match="did you mean CONVEYOR_CONCURRENCY"):
        Settings.load({"CONVEYOR_CONCURENCY": "3"})


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"CONVEYOR_CONCURRENCY": "0"}, "CONVEYOR_CONCURRENCY"),
        ({"CONVEYOR_CONCURRENCY": "lots"}, "--concurrency"),
        ({"CONVEYOR_URL": "mysql://x"}, "redis://"),
        ({"CONVEYOR_LOG_LEVEL": "LOUD"}, "log_level"),
    ],
)
def test_invalid_values_name_the_setting(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        Settings.load(env)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:secret@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://u:p@h/0?prefix=x", "redis://u:***@h/0?prefix=x"),
        ("rediss://h/0?password=zz&prefix=a", "rediss://h/0?password=***&prefix=a"),
        ("sqlite:////abs/x.db", "sqlite:////abs/x.db"),
        ("memory://", "memory://"),
    ],
)
def test_redact_hides_passwords_only(url: str, shown: str) -> None:
    from conveyor.settings import redact

    assert redact(url) == shown
