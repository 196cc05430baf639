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


def test_only_the_given_environment_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """`load(environ)` reads nothing else: no variable of the process leaks in (with
    pydantic-settings it did: the model read `os.environ` again under the given one)."""
    monkeypatch.setenv("CONVEYOR_CONCURRENCY", "7")
    assert Settings.load({}).concurrency == 10
    assert Settings.load().concurrency == 7


def test_a_known_name_in_another_case_counts_below_the_upper_case_one() -> None:
    """As with pydantic-settings before (it matched names in any case)."""
    assert Settings.load({"conveyor_concurrency": "3"}).concurrency == 3
    env = {"conveyor_concurrency": "3", "CONVEYOR_CONCURRENCY": "4"}
    assert Settings.load(env).concurrency == 4
    assert Settings.load({"conveyor_no_such": "1"}).concurrency == 10  # ignored, as before


def test_defaults_are_validated_and_frozen() -> None:
    s = Settings.load({})
    assert s.model_config.get("validate_default") is True
    with pytest.raises(ValueError, match="frozen"):
        s.concurrency = 3  # type: ignore[misc]
