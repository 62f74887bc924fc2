"""Settings: defaults validate, bad input is one line naming the setting."""

from __future__ import annotations

import pytest

from unbroken.errors import ConfigError
from unbroken.settings import Settings, load_settings


def test_defaults_are_valid_and_documented() -> None:
    settings = load_settings()
    assert settings.pool_max_size >= settings.pool_min_size
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} needs a one-line reason"


def test_out_of_range_env_var_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNBROKEN_POOL_MAX_SIZE", "0")
    with pytest.raises(ConfigError) as err:
        load_settings()
    message = str(err.value)
    assert message.startswith("UNBROKEN_POOL_MAX_SIZE:")
    assert "\n" not in message


def test_override_keyword_is_named_as_written() -> None:
    with pytest.raises(ConfigError, match=r"^concurrency: .*greater than or equal to 1"):
        load_settings(concurrency=0)


def test_unknown_env_var_suggests_the_close_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNBROKEN_POOL_MAXSIZE", "3")
    with pytest.raises(
        ConfigError,
        match=r"UNBROKEN_POOL_MAXSIZE: unknown setting \(did you mean pool_max_size\?\)",
    ):
        load_settings()


def test_malformed_url_is_refused_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNBROKEN_DATABASE_URL", "postgresql://u:sekrit@host:notaport/db")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert str(err.value).startswith("UNBROKEN_DATABASE_URL: not a valid PostgreSQL URL")
    assert "sekrit" not in str(err.value)


def test_min_above_max_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"pool_min_size .* larger than pool_max_size"):
        load_settings(pool_min_size=5, pool_max_size=2)


def test_url_resolution_order(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "PGHOST", "PGDATABASE", "PGPORT", "PGUSER", "PGSERVICE"):
        monkeypatch.delenv(name, raising=False)
    assert load_settings().configured_url() is None  # embedded
    monkeypatch.setenv("PGHOST", "db.internal")
    assert load_settings().configured_url() == ""  # libpq reads PG*
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@db/app")
    assert load_settings().configured_url() == "postgresql://app@db/app"
    assert load_settings(database_url="postgresql://x@y/z").configured_url() == (
        "postgresql://x@y/z"
    )


def test_bad_database_url_env_is_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://h:port/db")
    with pytest.raises(ConfigError, match=r"^DATABASE_URL: not a valid"):
        load_settings().configured_url()


def test_deadline_derives_from_statement_timeout() -> None:
    assert load_settings(statement_timeout=5).deadline() == 15
    assert load_settings(statement_deadline=2).deadline() == 2
